"""Shared test set-up: quiet TensorFlow logs and a clean Keras state per test."""

import os

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
# without a `case` parameter, still run here. pytest reports the others as
# deselected.
JAX_LEFT_OUT_VARIANTS = (
    "mixed_mean",
    "mixed_learned",
    "attention_softmax",
    "gated_attention_ungated",
    "simpool_gamma",
)


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() != "jax":
        return
    kept, left_out = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("case") if callspec else None
        variant = isinstance(case, str) and case in JAX_LEFT_OUT_VARIANTS
        (left_out if variant else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
