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
def test_values_and_gradients_match_the_reduction(keepdims):
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 5, 6, 4)))
    dy = np.random.default_rng(1).normal(size=(3, 1, 1, 4) if keepdims else (3, 4))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        fast = fast_paths.window_avg_pool(x, (5, 6), (1, 2), keepdims)
        plain = ops.mean(x, axis=(1, 2), keepdims=keepdims)
        fast_loss = tf.reduce_sum(fast * dy)
        plain_loss = tf.reduce_sum(plain * dy)
    np.testing.assert_allclose(fast, plain, rtol=1e-12)
    np.testing.assert_allclose(
        tape.gradient(fast_loss, x), tape.gradient(plain_loss, x), rtol=1e-12
    )


@pytest.mark.parametrize("name", ["avg", "max", "mixed"])
def test_nan_propagates_like_numpy(name):
    x = np.ones((1, 3, 3, 3), "float32")
    x[0, 1, 1, 0] = np.nan
    x[0, 0, 0, 1] = np.inf
    avg, peak = x.mean(axis=(1, 2)), x.max(axis=(1, 2))
    expected = {"avg": avg, "max": peak, "mixed": np.concatenate([avg, peak], -1)}
    np.testing.assert_array_equal(kgp.get(name)(x), expected[name])


@pytest.mark.parametrize("name", ["avg", "max", "mixed"])
def test_layer_uses_the_same_values_on_both_paths(name):
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 3)).astype("float32")
    static = kgp.get(name)(x)
    inputs = keras.Input((None, None, 3))  # unknown sizes: the reduction path
    dynamic = keras.Model(inputs, kgp.get(name)(inputs)).predict(x, verbose=0)
    np.testing.assert_allclose(static, dynamic, rtol=1e-6)
