"""iSQRT-COV: the covariance over valid positions and its Newton-Schulz root."""

import keras
import numpy as np
from keras import ops

from keras_globalpool.pool_ops.channel_pools import global_avg_pool
from keras_globalpool.pool_ops.reductions import (
    _SCALE,
    _UNSCALE,
    SUM_BLOCK,
    _block_size,
    _no_elements,
    _nonzero,
    _runs,
    blocked_sum,
    count_valid,
)


def _matmul(a, b):
    # `einsum`, not `matmul`: Keras's torch `matmul` computes float64 in float32.
    return ops.einsum("bij,bjk->bik", a, b)


def _flat_positions(x):
    """`(batch, *positions, channels)` as `(batch, positions, channels)`.

    The sizes, not -1: a reshape cannot infer a size from an empty batch.
    """
    shape = ops.shape(x)
    positions = 1
    for size in shape[1:-1]:
        positions = positions * size
    return ops.reshape(x, (shape[0], positions, shape[-1]))


def blocked_gram(features):
    """`sum_p f_p f_p^T` over the positions `p`, summed as `blocked_sum` sums.

    Each run of at most `SUM_BLOCK` positions is one product, and the runs'
    products are added with `blocked_sum`, so the rounding error does not
    grow with the number of positions.

    Args:
        features: tensor of shape `(batch, positions, channels)`.

    Returns:
        The Gram matrices, of shape `(batch, channels, channels)`.
    """
    size = features.shape[1]
    if size is not None and size <= SUM_BLOCK:
        return ops.einsum("bpc,bpd->bcd", features, features)
    runs = _runs(features, 1, SUM_BLOCK if size is None else _block_size(size))
    # Scaled as `_fold` scales, so that XLA keeps the levels apart.
    grams = ops.einsum("brpc,brpd->brcd", runs, runs) * _SCALE
    return blocked_sum(grams, axes=(1,)) * _UNSCALE


def _trace(matrices):
    """`ops.trace` over the last two axes, with no `eye` on TensorFlow.

    Keras's TensorFlow `trace` masks the matrices with an `eye` built at run
    time, which Keras's ONNX export (tf2onnx) writes as an `EyeLike` that
    onnxruntime cannot run. The same sum with a constant mask gives the
    same bits; the other backends keep their own `trace`.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.trace(matrices, axis1=-2, axis2=-1)
    diagonal = ops.convert_to_tensor(np.eye(matrices.shape[-1], dtype=bool))
    return ops.sum(ops.where(diagonal, matrices, 0.0), axis=(-2, -1))


def iterative_sqrtm(matrices, iterations):
    """iSQRT-COV's square root of symmetric positive semi-definite matrices.

    Each matrix `M` is divided by its trace, `A = M / tr(M)`, whose
    eigenvalues then lie in [0, 1]; `iterations` coupled Newton-Schulz steps
    `T = (3 I - Z Y) / 2`, `Y <- Y T`, `Z <- T Z` from `Y = A`, `Z = I` take
    `Y` towards `sqrt(A)` (and `Z` towards its inverse), from below; the
    result is `Y * sqrt(tr(M))`. Only matrix products: no eigendecomposition
    or SVD, which GPUs run slowly. A zero matrix gives zeros.

    Args:
        matrices: tensor of shape `(batch, n, n)`.
        iterations: int >= 1. The number of Newton-Schulz steps.

    Returns:
        The roots, of shape `(batch, n, n)`.

    Example:

    >>> from keras_globalpool.pool_ops import iterative_sqrtm
    >>> m = np.diag([4.0, 1.0])[None].astype("float32")
    >>> root = keras.ops.convert_to_numpy(iterative_sqrtm(m, iterations=8))
    >>> np.round(np.diag(root[0]), 4).tolist()
    [2.0, 1.0]
    """
    # A constant, not `ops.eye`: see `_trace`.
    identity = ops.convert_to_tensor(np.eye(matrices.shape[-1]), matrices.dtype)
    trace = _trace(matrices)[:, None, None]
    # A zero matrix is divided by 1: its root is zero, and neither the value
    # nor the gradient meets 0 / 0.
    trace = ops.where(trace > 0, trace, 1.0)
    a = matrices / trace
    t = 1.5 * identity - 0.5 * a
    y, z = _matmul(a, t), t
    for step in range(1, iterations):
        t = 1.5 * identity - 0.5 * _matmul(z, y)
        y = _matmul(y, t)
        if step < iterations - 1:
            z = _matmul(t, z)
    return y * ops.sqrt(trace)


def upper_triangle(matrices):
    """The upper triangles, diagonal included, row by row.

    Args:
        matrices: tensor of shape `(batch, n, n)`.

    Returns:
        Tensor of shape `(batch, n * (n + 1) / 2)`.
    """
    n = matrices.shape[-1]
    indices = [row * n + col for row in range(n) for col in range(row, n)]
    flat = ops.reshape(matrices, (ops.shape(matrices)[0], n * n))
    return ops.take(flat, indices, axis=1)


def global_covariance_pool(features, iterations, mask=None):
    """iSQRT-COV pooling: the matrix square root of the features' covariance.

    The biased covariance `C` of the valid positions (divided by their
    number `n`), its `iterative_sqrtm`, and its `upper_triangle`. The
    features are centered before their Gram matrix is taken (not
    `E[x x^T] - m m^T`, which cancels), and that sum is a `blocked_gram`.

    The result scales with the features, `f(s x) = s f(x)` for `s > 0`, so
    it is computed for the centered features divided by their largest
    `|value|` and multiplied back: every intermediate stays near 1, so the
    value and the gradient stay finite and exact for features whose `C`,
    trace, or the trace's `1 / t**2` in the gradient, would underflow or
    overflow (float32 features of 2**-70 and 2**100 are tested). A sample
    whose covariance is 0 (one valid position, constant features, or none
    valid) gives zeros, with a finite gradient.

    Args:
        features: tensor of shape `(batch, *positions, channels)`; masked
            positions must already hold zeros.
        iterations: int >= 1. The number of Newton-Schulz steps.
        mask: optional boolean tensor of shape `(batch, *positions, 1)`.

    Returns:
        Tensor of shape `(batch, channels * (channels + 1) / 2)`.
    """
    positions = tuple(range(1, len(features.shape) - 1))
    centered = features - global_avg_pool(features, positions, mask, keepdims=True)
    if mask is not None:
        centered = ops.where(mask, centered, 0.0)
    if _no_elements(centered):
        scale = ops.ones((1,) * len(centered.shape), centered.dtype)
    else:
        peak = ops.max(ops.abs(centered), axis=(*positions, -1), keepdims=True)
        # A constant factor: it changes no gradient of the exact result.
        scale = ops.stop_gradient(ops.where(peak > 0, peak, 1.0))
    flat = _flat_positions(centered / scale)
    if mask is None:
        count = count_valid(flat, (1,))
    else:
        count = ops.sum(_flat_positions(ops.cast(mask, flat.dtype)), axis=1)
        count = count[..., None]
    covariance = blocked_gram(flat) / _nonzero(count)
    pooled = upper_triangle(iterative_sqrtm(covariance, iterations))
    return pooled * ops.reshape(scale, (ops.shape(scale)[0], 1))
