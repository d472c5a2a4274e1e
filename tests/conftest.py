"""Shared test set-up: quiet TensorFlow logs and a clean Keras state per test."""

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_keras_globals():
    """Each test starts from float32 and channels_last, whatever the last did."""
    policy = keras.config.dtype_policy()
    data_format = keras.config.image_data_format()
    yield
    keras.config.set_dtype_policy(policy)
    keras.config.set_image_data_format(data_format)


# On jax, which compiles every operation for each new shape, the layer
# suites run one case per pooling: the tests parametrized by a `case` that
# is a variant of a pooling (another mode, normalization, gate or power)
# run on TensorFlow and torch only; tests that build a variant by name,
# without a `case` parameter, still run here. And a test parametrized by
# both rank and data format runs three of its six pairs, each rank once and
# each format at least once: the layout code is the same Python on every
# backend, and TensorFlow and torch run every pair. pytest reports the
# others as deselected.
JAX_LEFT_OUT_VARIANTS = (
    "mixed_mean",
    "mixed_learned",
    "attention_softmax",
    "gated_attention_ungated",
    "simpool_gamma",
)
JAX_RANK_FORMATS = ((3, "channels_first"), (4, "channels_last"), (5, "channels_first"))
# Keras's harness names its cases, as tests/test_keras_harness.py builds them.
_HARNESS_CASE = re.compile(r"test_run_layer_test_(\w+)_(\d)d_(channels_\w+)$")


def _parameters(item):
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        return callspec.params
    match = _HARNESS_CASE.match(item.name)
    if match is None:
        return {}
    case, rank, data_format = match.groups()
    return {"case": case, "rank": int(rank), "data_format": data_format}


def _left_out_on_jax(item):
    parameters = _parameters(item)
    case = parameters.get("case")
    if isinstance(case, str) and case in JAX_LEFT_OUT_VARIANTS:
        return True
    if "rank" in parameters and "data_format" in parameters:
        pair = (parameters["rank"], parameters["data_format"])
        return pair not in JAX_RANK_FORMATS
    return False


def pytest_collection_modifyitems(config, items):
    jax = keras.backend.backend() == "jax"
    kept, left_out = [], []
    for item in items:
        if jax:
            (left_out if _left_out_on_jax(item) else kept).append(item)
        else:  # what compares jax's programs runs in the jax session only
            jax_only = item.get_closest_marker("jax_only") is not None
            (left_out if jax_only else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
