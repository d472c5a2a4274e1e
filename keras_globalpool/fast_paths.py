"""Global pooling as full-window pooling kernels, where that is faster.

On the TensorFlow backend in graph mode (what `model.compile()` gives) and
eagerly, `average_pool` and `max_pool` with a window covering the whole map
run on oneDNN kernels with up to twice the throughput of `reduce_mean` and
`reduce_max` (see `benchmarks/`). They are plain `keras.ops` calls, so a
SavedModel that uses them needs neither XLA nor our classes. The paths
apply only where they were measured to win: TensorFlow, 2D `channels_last`
maps of static spatial size, no mask, and not inside an XLA compilation
(`jit_compile=True`): there the average pool gains nothing over the
reduction, and the mixed path, a conditional around a max pool, compiles
1.1x to 1.6x slower than the two reductions. Everywhere else the layers use
their blocked sums (`keras_globalpool.pool_ops.blocked_sum`) and `ops.max`.

The average pool's gradient is `reduce_mean`'s, one broadcast: TensorFlow's
`AvgPoolGrad` kernel made mixed pooling's training step up to 1.27x slower
than Keras's layers.

A pooling kernel sums its window in an order of its own: TensorFlow's CPU
`average_pool` lost 1.9e-6 of a mean at 64x64 and 0.18% at 512x512 (values
near 100). `keras_globalpool.pool_ops` therefore takes `window_avg_pool` only
for windows of at most 64 positions, where any order keeps its error bound
(7x7 and 8x8, ResNet's and EfficientNet's last maps). The max pool is exact,
so mixed pooling takes it at any window size, with the blocked means as its
NaN witness.

The `max_pool` kernel skips NaNs, where `reduce_max` (and NumPy) propagate
them, and it sends a tied maximum's whole gradient to one position, where
`reduce_max` shares it. `window_max_pool` therefore needs a NaN witness that
the caller already has, the window means: where any of them is NaN it falls
back to `ops.max` for the batch, and its gradient is `reduce_max`'s. With no
witness a second pass over the map would cost what `max_pool` saves, so
plain max pooling stays on `ops.max`; mixed pooling gets the witness for
free.

Example:

>>> from keras_globalpool.fast_paths import (
...     pooling_window, window_avg_pool, window_max_pool)
>>> x = np.random.rand(2, 7, 7, 8).astype("float32")
>>> pooling_window(x, axes=(1,)) is None  # Not the axes of a 2D map.
True
>>> window = (7, 7)  # What `pooling_window(x, axes=(1, 2))` gives on TensorFlow.
>>> avg = window_avg_pool(x, window, axes=(1, 2), keepdims=True)
>>> np.allclose(keras.ops.convert_to_numpy(avg)[:, 0, 0], x.mean(axis=(1, 2)))
True
>>> pooled = window_max_pool(x, window, axes=(1, 2), nan_witness=avg)
>>> np.array_equal(keras.ops.convert_to_numpy(pooled), x.max(axis=(1, 2)))
True
"""

import keras
from keras import ops


def pooling_window(x, axes):
    """The window to pool `x` with, or None where the fast paths do not apply.

    Args:
        x: the tensor to be pooled.
        axes: tuple of int. The spatial axes.

    Returns:
        A tuple of the static spatial sizes, or None.
    """
    if keras.backend.backend() != "tensorflow" or tuple(axes) != (1, 2):
        return None
    if len(x.shape) != 4 or _in_xla_compilation():
        return None
    window = tuple(x.shape[axis] for axis in axes)
    if any(size is None for size in window):
        return None
    return window


def _in_xla_compilation():
    """Whether TensorFlow is tracing a function for XLA (`jit_compile=True`)."""
    # TensorFlow's own code asks the same question, through an internal
    # module: if it moves, the paths apply under XLA too, slower but equal.
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util

        graph = tf_ops.get_default_graph()
        return bool(control_flow_util.GraphOrParentsInXlaContext(graph))
    except (ImportError, AttributeError):
        return False


def _finish(pooled, axes, keepdims):
    return pooled if keepdims else ops.squeeze(pooled, axis=axes)


def window_avg_pool(x, window, axes, keepdims=False):
    """The mean of a channels_last `x` over `axes`, as one average pool.

    Args:
        x: the tensor to be pooled.
        window: tuple of int, from `pooling_window`.
        axes: tuple of int. The spatial axes.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    positions = window[0] * window[1]

    @ops.custom_gradient
    def avg_keepdims(x):
        # `data_format` is explicit: the global default may be channels_first.
        pooled = ops.average_pool(
            x, window, strides=1, padding="valid", data_format="channels_last"
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # `reduce_mean`'s gradient, one broadcast (see above).
            return ops.broadcast_to(upstream / positions, ops.shape(x))

        return pooled, grad

    return _finish(avg_keepdims(x), axes, keepdims)


def _column_max_pool(x, window):
    """The full-window max pool of `x`, shaped `(batch, 1, 1, channels)`.

    The map is pooled as one column of `height * width` positions: oneDNN's
    max pool runs up to 1.4x faster on a `(n, 1)` window than on `(h, w)`.
    """
    channels = x.shape[3]
    if channels is None:
        return ops.max_pool(
            x, window, strides=1, padding="valid", data_format="channels_last"
        )
    positions = window[0] * window[1]
    column = ops.reshape(x, (-1, positions, 1, channels))
    pooled = ops.max_pool(
        column, (positions, 1), strides=1, padding="valid", data_format="channels_last"
    )
    return ops.reshape(pooled, (-1, 1, 1, channels))


def window_max_pool(x, window, axes, nan_witness, keepdims=False):
    """The maximum of a channels_last `x` over `axes`, as one max pool.

    NaN propagates as in `ops.max`, and the gradient is `ops.max`'s: a tied
    maximum shares it equally.

    Args:
        x: the tensor to be pooled.
        window: tuple of int, from `pooling_window`.
        axes: tuple of int. The spatial axes.
        nan_witness: tensor with one value per pooled value, NaN wherever
            that window of `x` holds a NaN, such as the window means. Its
            gradient is not used.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    any_nan = ops.any(ops.isnan(ops.stop_gradient(nan_witness)))

    @ops.custom_gradient
    def max_keepdims(x):
        pooled = ops.cond(
            any_nan,
            lambda: ops.max(x, axis=axes, keepdims=True),
            lambda: _column_max_pool(x, window),
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # `reduce_max`'s gradient: shared among ties, NaN where pooled is.
            winners = ops.cast(ops.equal(x, pooled), upstream.dtype)
            count = ops.sum(winners, axis=axes, keepdims=True)
            return winners / count * upstream

        return pooled, grad

    return _finish(max_keepdims(x), axes, keepdims)
