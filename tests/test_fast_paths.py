"""The full-window pooling fast paths agree with the plain reductions."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from layer_cases import make_pooling
from tensorflow.core.protobuf import saved_model_pb2

import keras_globalpool as kgp
from keras_globalpool import fast_paths, pool_ops


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


@pytest.mark.parametrize("jit_compile, applies", [(False, True), (True, False)])
def test_pooling_window_stays_out_of_xla(jit_compile, applies):
    # Under XLA the fast paths gain nothing or lose.
    windows = []

    def trace(x):
        windows.append(fast_paths.pooling_window(x, (1, 2)))
        return x

    tf.function(trace, jit_compile=jit_compile)(tf.zeros((1, 3, 3, 2)))
    assert (windows[0] is not None) == applies


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


def _avg_max_and_gradients(x, keepdims, jit_compile=None):
    """Both paths' values and input gradients, eagerly or in a tf.function."""
    dy_shape = (x.shape[0], 1, 1, x.shape[3]) if keepdims else (x.shape[0], x.shape[3])
    dy = tf.constant(np.random.default_rng(3).normal(size=dy_shape), x.dtype)

    def run(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            fast = pool_ops.global_avg_max_pool(x, (1, 2), keepdims=keepdims)
            plain = (
                ops.mean(x, axis=(1, 2), keepdims=keepdims),
                ops.max(x, axis=(1, 2), keepdims=keepdims),
            )
            losses = [tf.reduce_sum(p * dy) for p in (*fast, *plain)]
        grads = [tape.gradient(loss, x) for loss in losses]
        return (*fast, *plain), grads

    if jit_compile is not None:
        run = tf.function(run, jit_compile=jit_compile)
    values, grads = run(tf.constant(x))
    return [np.asarray(v) for v in values], [np.asarray(g) for g in grads]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("jit_compile", [None, False, True])
def test_avg_max_pool_matches_the_reductions(dtype, keepdims, jit_compile):
    # Small integers: many tied maxima, whose gradient reduce_max shares.
    x = np.random.default_rng(4).integers(0, 3, size=(3, 4, 5, 6)).astype(dtype)
    (avg, peak, plain_avg, plain_peak), grads = _avg_max_and_gradients(
        x, keepdims, jit_compile
    )
    np.testing.assert_allclose(avg, plain_avg, rtol=1e-6)
    np.testing.assert_array_equal(peak, plain_peak)
    np.testing.assert_allclose(grads[0], grads[2], rtol=1e-6)
    np.testing.assert_array_equal(grads[1], grads[3])
    assert np.any((grads[3] > 0) & (grads[3] < 1))  # ties did share


@pytest.mark.parametrize("jit_compile", [None, False])
def test_avg_max_pool_propagates_nan_like_numpy(jit_compile):
    x = np.ones((2, 3, 3, 5), "float32")
    x[0, 1, 1, 0] = np.nan  # one NaN
    x[0, 0, 0, 1], x[0, 2, 2, 1] = np.inf, np.nan  # NaN beside +inf
    x[0, :, :, 2] = np.nan  # all NaN
    x[0, 0, 0, 3], x[0, 1, 1, 3] = np.inf, -np.inf  # mean NaN, max inf
    x[1, 0, 0, 4] = np.inf  # sample 1 has no NaN
    (avg, peak, _, _), grads = _avg_max_and_gradients(x, False, jit_compile)
    with np.errstate(invalid="ignore"):  # inf - inf
        np.testing.assert_array_equal(avg, x.mean(axis=(1, 2)))
    np.testing.assert_array_equal(peak, x.max(axis=(1, 2)))
    np.testing.assert_array_equal(grads[1], grads[3])  # NaN where reduce_max's is


@pytest.mark.parametrize("channels", [3, None])
def test_window_max_pool_matches_numpy_without_nan(channels):
    x = np.random.default_rng(5).normal(size=(2, 4, 5, 3)).astype("float32")

    @tf.function(input_signature=[tf.TensorSpec((None, 4, 5, channels))])
    def pool(x):
        avg = fast_paths.window_avg_pool(x, (4, 5), (1, 2), keepdims=True)
        return fast_paths.window_max_pool(x, (4, 5), (1, 2), avg)

    np.testing.assert_array_equal(pool(x), x.max(axis=(1, 2)))


@pytest.mark.parametrize("name", ["avg", "mixed"])
def test_fast_paths_ignore_the_global_data_format(name):
    x = np.random.default_rng(6).normal(size=(2, 5, 6, 3)).astype("float32")
    expected = kgp.get(name, data_format="channels_last")(x)
    keras.config.set_image_data_format("channels_first")
    np.testing.assert_allclose(
        kgp.get(name, data_format="channels_last")(x), expected, rtol=1e-6
    )
    avg, peak = pool_ops.global_avg_max_pool(x, (1, 2))
    np.testing.assert_allclose(avg, x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(peak, x.max(axis=(1, 2)))


@pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
def test_export_has_no_must_compile_function(name, tmp_path):
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(
        inputs, keras.layers.Dense(2)(make_pooling(name)(keras.layers.ReLU()(inputs)))
    )
    path = kgp.export_saved_model(model, tmp_path)
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    must_compile = [
        function.signature.name
        for graph in saved_model.meta_graphs
        for function in graph.graph_def.library.function
        if function.attr["_XlaMustCompile"].b
    ]
    assert not must_compile
