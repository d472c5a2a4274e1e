"""Property-based tests: every layer matches the NumPy oracle on drawn inputs.

Hypothesis draws the rank (1D, 2D, 3D maps), the data format, keepdims,
sizes (1 and odd sizes included), the batch (1 included), a 1D mask for
rank-3 inputs (whole rows masked included), the dtype policy, the layer's
weights, and the values. The oracle (`keras_globalpool.reference`) computes in
float64 from exactly the values the layer sees (the input rounded to the
compute dtype), so the tolerance is that of the dtype:

- the output is rounded to the compute dtype: `2u |ref|` with `u` its unit
  roundoff (2**-11 for float16, 2**-8 for bfloat16);
- the reduction runs in float32 (float64 for float64) over at most a few
  hundred values: `64 u32 max|x|`, and 16x that for GeM and attention, whose
  logarithms and softmax add error proportional to their arguments.
"""

import keras
import numpy as np
import pytest
import strategies
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_cases import (
    ATTENTION_CASES,
    LAYER_CASES,
    call,
    reference_attention,
    reference_forward,
)

MAX_EXAMPLES = strategies.examples(100)  # per layer case


# The cases whose output does not scale with the input (`f(s x) != s f(x)`).
NOT_HOMOGENEOUS = ("gem", "map", "simpool", "simpool_gamma", "covariance", "csra")


def _tolerance(case, policy, x):
    out_eps = strategies.ROUNDOFF[strategies.compute_dtype(policy)]
    work_eps = strategies.ROUNDOFF[strategies.reduction_dtype(policy)]
    factor = 64 * (16 if case in ATTENTION_CASES or case == "gem" else 1)
    scale = float(np.max(np.abs(x), initial=0.0))
    if case in NOT_HOMOGENEOUS:
        # Clamped values and log(eps) (gem), or biases and layer norms whose
        # outputs are of order 1 whatever the input's scale, enter the error.
        scale = max(scale, 1.0)
    tiny = strategies.TINY[strategies.compute_dtype(policy)]
    return 2 * out_eps, factor * work_eps * scale + tiny


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@settings(max_examples=MAX_EXAMPLES)
@given(data=st.data())
def test_matches_reference(case, data):
    policy = data.draw(st.sampled_from(strategies.POLICIES), label="policy")
    spec = data.draw(strategies.maps(), label="spec")
    layer = strategies.built_layer(data.draw, case, policy, spec)
    x = strategies.as_seen_by(strategies.values(data.draw, spec["shape"]), policy)
    mask = spec["mask"]

    out = call(layer, x, mask=mask)

    dtype = keras.backend.standardize_dtype(out.dtype)
    assert dtype == strategies.compute_dtype(policy)
    assert tuple(out.shape) == layer.compute_output_shape(spec["shape"])
    got = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(out, "float64")))
    expected = reference_forward(layer, x.astype(np.float64), mask)
    rtol, atol = _tolerance(case, policy, x)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    assert np.all(np.isfinite(got))


@settings(max_examples=MAX_EXAMPLES)
@given(data=st.data())
def test_attention_scores_match_reference(data):
    """The returned weights are the oracle's, and sum to 1 over valid steps."""
    policy = data.draw(st.sampled_from(strategies.POLICIES), label="policy")
    spec = data.draw(strategies.maps(), label="spec")
    case = data.draw(st.sampled_from(ATTENTION_CASES))
    layer = strategies.built_layer(data.draw, case, policy, spec)
    x = strategies.as_seen_by(strategies.values(data.draw, spec["shape"]), policy)
    mask = spec["mask"]

    _, scores = call(layer, x, mask=mask, return_attention_scores=True)

    got = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(scores, "float64")))
    _, expected = reference_attention(layer, x.astype(np.float64), mask)
    out_eps = strategies.ROUNDOFF[strategies.compute_dtype(policy)]
    work_eps = strategies.ROUNDOFF[strategies.reduction_dtype(policy)]
    scale = max(float(np.max(np.abs(x), initial=0.0)), 1.0)
    np.testing.assert_allclose(
        got, expected, rtol=2 * out_eps, atol=1024 * work_eps * scale
    )
