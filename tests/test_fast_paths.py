"""The full-window pooling fast path agrees with the plain reductions."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_globalpool as kgp
from keras_globalpool import fast_paths


@pytest.mark.parametrize(
    "shape, axes, applies",
    [
        ((2, 7, 7, 8), (1, 2), True),
        ((2, 8, 7, 7), (2, 3), False),  # channels_first
        ((2, 9, 8), (1,), False),  # 1D
        ((2, 3, 3, 3, 8), (1, 2, 3), False),  # 3D
    ],
)
def test_pooling_window_applies_where_measured(shape, axes, applies):
    window = fast_paths.pooling_window(np.zeros(shape, "float32"), axes)
    assert (window == shape[1:3]) if applies else window is None


def test_pooling_window_needs_static_sizes():
    assert fast_paths.pooling_window(keras.Input((None, None, 4)), (1, 2)) is None


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name, reduce", [("avg", ops.mean), ("max", ops.max)])
def test_values_and_gradients_match_reductions(name, reduce, keepdims):
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 5, 6, 4)))
    # Ties at the maximum: the gradient must be split as reduce_max splits it.
    x = tf.tensor_scatter_nd_update(x, [[0, 0, 0, 0], [0, 4, 5, 0]], [9.0, 9.0])
    pool = getattr(fast_paths, f"window_{name}_pool")
    dy = np.random.default_rng(1).normal(size=(3, 1, 1, 4) if keepdims else (3, 4))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        fast = pool(x, (5, 6), (1, 2), keepdims)
        plain = reduce(x, axis=(1, 2), keepdims=keepdims)
        fast_loss = tf.reduce_sum(fast * dy)
        plain_loss = tf.reduce_sum(plain * dy)
    np.testing.assert_allclose(fast, plain, rtol=1e-12)
    fast_grad = tape.gradient(fast_loss, x).numpy()
    np.testing.assert_allclose(fast_grad, tape.gradient(plain_loss, x), rtol=1e-12)
    if name == "max":
        assert (
            fast_grad[0, 0, 0, 0]
            == fast_grad[0, 4, 5, 0]
            == pytest.approx(dy[0, ..., 0].item() / 2)
        )


@pytest.mark.parametrize("name", ["avg", "max", "mixed"])
def test_layer_uses_the_same_values_on_both_paths(name):
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 3)).astype("float32")
    static = kgp.get(name)(x)
    inputs = keras.Input((None, None, 3))  # unknown sizes: the reduction path
    dynamic = keras.Model(inputs, kgp.get(name)(inputs)).predict(x, verbose=0)
    np.testing.assert_allclose(static, dynamic, rtol=1e-6)
