"""Global average pooling as one full-window average pool, where that is faster.

On the TensorFlow backend in graph mode, `average_pool` with a window
covering the whole map runs on a oneDNN kernel with about twice the
throughput of `reduce_mean` (see `benchmarks/`), and under XLA it compiles to
the same code as the reduction. It is still a plain `keras.ops` call, so a
SavedModel that uses it needs neither XLA nor our classes. The path applies
only where it was measured: TensorFlow, 2D `channels_last` maps of static
spatial size, no mask. Everywhere else the layers use `ops.mean`.

Max pooling has no such path: the full-window `max_pool` kernel skips NaNs,
where `reduce_max` (and NumPy) propagate them.

Example:

>>> x = np.random.rand(2, 7, 7, 8).astype("float32")
>>> window = pooling_window(x, axes=(1, 2))
>>> window_avg_pool(x, window, axes=(1, 2)).shape
(2, 8)
"""

import keras
from keras import ops


def pooling_window(x, axes):
    """The window to pool `x` with, or None where the fast path does not apply.

    Args:
        x: the tensor to be pooled.
        axes: tuple of int. The spatial axes.

    Returns:
        A tuple of the static spatial sizes, or None.
    """
    if keras.backend.backend() != "tensorflow" or tuple(axes) != (1, 2):
        return None
    if len(x.shape) != 4:
        return None
    window = tuple(x.shape[axis] for axis in axes)
    if any(size is None for size in window):
        return None
    return window


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
    pooled = ops.average_pool(x, window, strides=1, padding="valid")
    return _finish(pooled, axes, keepdims)
