"""Masked token models exported to ONNX: finite, and equal to Keras.

Keras exports ONNX through tf2onnx, which writes TensorFlow's `SelectV2`
(`keras.ops.where`) as `c * a + (1 - c) * b` unless its condition is
`isnan`/`isinf` or a branch is a constant inf or NaN. An inf or NaN in the
branch not taken then leaks through `0 * inf`: a fully masked sample gave
NaN rather than zeros. Here the layers' graphs are exported with Keras's
`model.export` alone, in 16 bits (`mixed_float16`, where tf2onnx writes
every `where` so) and over sums long enough to fold; in float32, every
pooling goes through `kgp.export` in tests/test_export_formats.py.
"""

import keras
import numpy as np
import pytest
from layer_cases import token_ids, token_model

pytest.importorskip("tf2onnx")
onnxruntime = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="Keras exports ONNX with tf2onnx, from TensorFlow only",
)

# tf2onnx has no conversion for `Expm1` and `Log1p`, and writes a model that
# onnxruntime refuses.
UNCONVERTIBLE = {"lse": "tf2onnx cannot convert Expm1/Log1p (LSE's near-mean sum)"}
MIXED_PRECISION = ("max", "mixed", "attention", "gem", "gated_attention", "map")
# Longer than `SUM_BLOCK`, so that the sums fold, over a size known only at
# run time: a blocked sum (avg), a weighted one (attention), a Gram matrix
# (covariance).
FOLDED = ("avg", "attention", "covariance")


def _poolings(names):
    return [
        pytest.param(
            name,
            marks=pytest.mark.xfail(strict=True, reason=UNCONVERTIBLE[name]),
        )
        if name in UNCONVERTIBLE
        else name
        for name in names
    ]


def _check_onnx_matches(pooling, path, atol, steps=9):
    model = token_model(pooling)
    ids = token_ids(steps)
    expected = model.predict(ids, verbose=0)
    model.export(str(path), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(path))
    (got,) = session.run(None, {session.get_inputs()[0].name: ids})
    assert np.isfinite(got).all(), f"{pooling} exported to ONNX gave {got}"
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("pooling", _poolings(MIXED_PRECISION))
@pytest.mark.usefixtures("mixed_float16")
def test_masked_onnx_matches_keras_mixed_float16(pooling, tmp_path):
    _check_onnx_matches(pooling, tmp_path / "m.onnx", atol=2e-3)


@pytest.mark.parametrize("pooling", FOLDED)
def test_folded_sums_onnx_matches_keras(pooling, tmp_path):
    _check_onnx_matches(pooling, tmp_path / "m.onnx", atol=1e-5, steps=100)
