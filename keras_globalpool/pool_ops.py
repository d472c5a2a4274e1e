"""Backend-agnostic global-pooling math, written with `keras.ops` only.

Each function reduces `x` over the spatial `axes`. `mask`, when given, is a
boolean tensor broadcastable to `x` (a 1 on the channel axis) that marks the
valid positions; masked positions never change the result, whatever they hold,
and a sample with no valid position pools to zeros, as does a map with no
position at all (a spatial size of 0). A NaN at a valid position propagates as
in NumPy's `mean` and `max`. A batch of no sample pools to a batch of no
sample. The layers cast to float32 before calling these functions when their
compute dtype is 16-bit.

Accuracy: every sum over positions (the mean, GeM's sum of powers,
attention's weights and weighted sum, LSE's sums of exponentials, the
covariance's Gram matrix) is a
`blocked_sum`, in which no partial sum adds more than `SUM_BLOCK` (64)
terms. A plain float32 reduction over
`n` positions can be off by about `n` units of roundoff: TensorFlow's CPU
reduction of a `channels_last` map loses 1% at 2**20 positions. Blocked, the
rounding error is at most `h * u * sum(|x|)` (to first order, `u = 2**-24` in
float32), where `h <= 63` per level of partial sums and there are
`ceil(log64(size))` levels per spatial axis (at most 4 for 2**24 positions),
so the bound does not grow with the map beyond that handful of levels. For
inputs of one sign that is a relative error of at most `h * u`; measured on
TensorFlow, jax and torch, eager and compiled, the relative error of a mean
stays below `32 * u` (1.9e-6) at every size from 49 to 2**20 positions, which
`tests/test_layer_reliability.py` checks. The max is exact.

Example:

>>> from keras_globalpool.pool_ops import global_avg_pool
>>> x = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
>>> keras.ops.convert_to_numpy(global_avg_pool(x, axes=(1, 2))).tolist()
[[3.0, 4.0]]
"""

import math

import keras
from keras import ops

from keras_globalpool import fast_paths

# The most terms a partial sum adds: see "Accuracy" above. Maps of at most
# this many positions (7x7, 8x8) are summed in one reduction.
SUM_BLOCK = 64
# Folds an axis of a size unknown until run time gets at most: axes of up to
# 64**4 = 2**24 positions stay within the bound.
_UNKNOWN_SIZE_FOLDS = 3
# Each fold's sums are scaled by this power of two, and the next level's
# sum scaled back: exact, and it keeps XLA (jax, `jit_compile=True`) from
# merging the levels back into one long reduction, which it otherwise does
# (`reduce(reduce(x))` becomes one reduce, 20 to 80 units of roundoff off at
# 2**16 positions).
_SCALE = 2.0**-6
_UNSCALE = 2.0**6


def _no_elements(x):
    """Whether an axis of `x` has a static size of 0: nothing to pool.

    A spatial axis of size 0 pools to zeros; a batch of size 0 to an empty
    batch. Keras's `max` refuses such tensors on TensorFlow (eagerly) and
    torch, so they never reach it.
    """
    return 0 in tuple(x.shape)


def blocked_sum(x, axes, keepdims=False):
    """Sum over `axes` whose rounding error does not grow with their size.

    A map of at most `SUM_BLOCK` positions is summed in one reduction.
    Larger ones are summed one axis at a time, and an axis longer than
    `SUM_BLOCK` is first folded: each run of up to 64 consecutive positions
    is summed, then the run sums, and so on. The folds reshape the axis
    (free) when its size has a divisor between 16 and 64, and otherwise pad
    it with zeros to a multiple of 64. An axis whose size is known only at
    run time is folded when it turns out longer than 64.

    Args:
        x: tensor to be summed.
        axes: tuple of int. The axes to sum over.
        keepdims: bool. Keep the summed axes with size 1.

    Returns:
        The sum, in `x`'s dtype.

    Example:

    >>> from keras_globalpool.pool_ops import blocked_sum
    >>> x = np.full((1, 2**20, 1), 100.5, "float32")
    >>> float(blocked_sum(x, axes=(1,))[0, 0]) == 100.5 * 2**20
    True
    """
    axes = tuple(sorted(axis % len(x.shape) for axis in axes))
    sizes = [x.shape[axis] for axis in axes]
    if None not in sizes and math.prod(sizes) <= SUM_BLOCK:
        return ops.sum(x, axis=axes, keepdims=keepdims)
    for axis in axes:
        x = _sum_axis(x, axis, _UNKNOWN_SIZE_FOLDS)
    return x if keepdims else ops.squeeze(x, axis=axes)


def _sum_axis(x, axis, folds):
    """`x` summed over `axis` (kept with size 1), folded where it is long."""
    size = x.shape[axis]
    if size is not None:
        if size <= SUM_BLOCK:
            return ops.sum(x, axis=axis, keepdims=True)
        return _sum_axis(_fold(x, axis, _block_size(size)), axis, folds) * _UNSCALE
    if folds == 0:
        return ops.sum(x, axis=axis, keepdims=True)
    return ops.cond(
        ops.shape(x)[axis] <= SUM_BLOCK,
        lambda: ops.sum(x, axis=axis, keepdims=True),
        lambda: _sum_axis(_fold(x, axis, SUM_BLOCK), axis, folds - 1) * _UNSCALE,
    )


def _block_size(size):
    """The run length to fold an axis of static `size` > 64 with.

    A divisor reshapes without a copy; with none in [16, 64] the axis is
    padded to a multiple of 64 instead of taking more, shorter levels.
    """
    for block in range(SUM_BLOCK, SUM_BLOCK // 4 - 1, -1):
        if size % block == 0:
            return block
    return SUM_BLOCK


def _fold(x, axis, block):
    """Sums each run of `block` consecutive positions along `axis`.

    The axis keeps its place with `ceil(size / block)` positions.
    """
    return ops.sum(_runs(x, axis, block), axis=axis + 1) * _SCALE


def _runs(x, axis, block):
    """`x` with `axis` split into `ceil(size / block)` runs of `block`.

    Zeros pad the last run. Every other axis keeps its size, known or not.
    """
    size = ops.shape(x)[axis]
    if not isinstance(size, int) or size % block:
        padding = [(0, 0)] * len(x.shape)
        padding[axis] = (0, (-size) % block)
        x = ops.pad(x, padding)
    shape = ops.shape(x)
    runs = (*shape[:axis], shape[axis] // block, block, *shape[axis + 1 :])
    return ops.reshape(x, runs)


def _static_sizes(x, axes):
    """Whether every spatial size is known before run time."""
    return all(x.shape[axis] is not None for axis in axes)


def _empty_pool(x, axes, keepdims):
    """The pooling of a map with no position: zeros, the sum of nothing."""
    return ops.sum(x, axis=axes, keepdims=keepdims)


def _nonzero(count):
    """`count` with 1 in place of 0, to divide by; NaN stays NaN.

    `where`, not `maximum`: Keras's torch `maximum` computes float64 in float32.
    """
    return ops.where(count == 0, 1.0, count)


def _valid_peak(logits, axes, mask):
    """The largest valid logit of each sample, to shift a softmax by.

    It is 0 where it is not finite (no valid position, or a logit of `+inf`),
    so subtracting it never gives `inf - inf`; NaN logits still give NaN. It
    takes no gradient: a softmax does not depend on its shift.
    """
    if _no_elements(logits):
        return ops.sum(logits, axis=axes, keepdims=True)  # 0: nothing to shift
    if mask is not None:
        logits = ops.where(mask, logits, float("-inf"))
    peak = ops.max(logits, axis=axes, keepdims=True)
    return ops.stop_gradient(ops.where(ops.isfinite(peak), peak, 0.0))


def _exp_shifted(logits, axes, mask):
    """`exp(logits - peak)` at the valid positions, 0 at the masked ones.

    Masked logits never take part, whatever they are: neither in the peak
    nor, through a double `where`, in the value or the gradient.
    """
    peak = _valid_peak(logits, axes, mask)
    if mask is None:
        return ops.exp(logits - peak), peak
    shifted = ops.where(mask, logits - peak, 0.0)
    return ops.where(mask, ops.exp(shifted), 0.0), peak


def count_valid(x, axes, mask=None, keepdims=False):
    """Number of valid positions per sample, in `x`'s dtype.

    Args:
        x: tensor to be pooled.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The count, shaped like a pooled `x` with a channel axis of size 1
        when `mask` is given, else a scalar.
    """
    if mask is None:
        shape = ops.shape(x)
        count = 1
        for axis in axes:
            count = count * shape[axis]
        return ops.cast(count, x.dtype)
    return ops.sum(ops.cast(mask, x.dtype), axis=axes, keepdims=keepdims)


def _zeros_where_empty(pooled, count):
    """Zeros for the samples whose `count` of valid positions is 0."""
    return ops.where(count > 0, pooled, ops.zeros_like(pooled))


def _where_valid(pooled, x, axes, mask, keepdims):
    """Zeros for samples with nothing to pool: fully masked, or of a size
    that turns out to be 0 at run time."""
    if mask is None and _static_sizes(x, axes):
        return pooled
    return _zeros_where_empty(pooled, count_valid(x, axes, mask, keepdims))


def _short_window(window):
    """Whether an average pool over `window` sums few enough terms.

    A pooling kernel sums its window in an order of its own, so only windows
    of at most `SUM_BLOCK` positions keep the documented bound; a 512x512
    window lost 0.18% on TensorFlow's CPU kernel.
    """
    return window is not None and math.prod(window) <= SUM_BLOCK


def global_avg_pool(x, axes, mask=None, keepdims=False):
    """Mean over the valid positions, summed with `blocked_sum`.

    Args:
        x: tensor to be pooled; masked positions must already hold zeros.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    if mask is None and not _no_elements(x):
        window = fast_paths.pooling_window(x, axes)
        if _short_window(window):
            return fast_paths.window_avg_pool(x, window, axes, keepdims)
    # A sum over a count, not `ops.mean`: a map with no position pools to 0
    # rather than 0 / 0, and Keras's jax and torch `mean` compute float64 in
    # float32.
    total = blocked_sum(x, axes, keepdims)
    count = count_valid(x, axes, mask, keepdims)
    return total / _nonzero(count)


def global_max_pool(x, axes, mask=None, keepdims=False):
    """Maximum over the valid positions.

    Args:
        x: tensor to be pooled.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    if _no_elements(x):
        return _empty_pool(x, axes, keepdims)
    if mask is not None:
        x = ops.where(mask, x, float("-inf"))
    # The max of nothing is -inf: fully masked, or a size 0 at run time.
    pooled = ops.max(x, axis=axes, keepdims=keepdims)
    return _where_valid(pooled, x, axes, mask, keepdims)


def global_avg_max_pool(x, axes, mask=None, keepdims=False):
    """Mean and maximum over the valid positions, as mixed pooling needs them.

    Equal to `(global_avg_pool(...), global_max_pool(...))`, values and
    gradients, but faster where `fast_paths` applies: the means tell the
    max pool where a NaN must propagate. The max pool is exact at any
    window size; the means take the average pool only for short windows.

    Args:
        x: tensor to be pooled; masked positions must already hold zeros.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        `(avg, max)`, the two pooled tensors.
    """
    if _no_elements(x):
        empty = _empty_pool(x, axes, keepdims)
        return empty, empty
    window = fast_paths.pooling_window(x, axes) if mask is None else None
    if window is None:
        return (
            global_avg_pool(x, axes, mask, keepdims),
            global_max_pool(x, axes, mask, keepdims),
        )
    avg = global_avg_pool(x, axes, keepdims=True)
    peak = fast_paths.window_max_pool(x, window, axes, avg, keepdims)
    return (avg if keepdims else ops.squeeze(avg, axis=axes)), peak


def global_gem_pool(x, p, axes, mask=None, eps=1e-6, keepdims=False):
    """Generalized mean `mean(max(x, eps) ** p) ** (1 / p)`.

    Computed in log space, as `exp((log(mean(exp(z - peak))) + peak) / p)`
    with `z = p * log(max(x, eps))` and `peak` the largest valid `z`, which
    equals the formula above and cannot overflow for any `p` or input size.
    The sum is a `blocked_sum`, and dividing it by the count before the log
    keeps `log(n)` out of the rounding: the relative error is that of the
    sum over `p`, plus a few units of roundoff times `|log(x)|`.
    NaN propagates, `+inf` gives `+inf`, and `-inf` is clamped to `eps`.

    Args:
        x: tensor to be pooled.
        p: scalar tensor or float > 0. The exponent.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        eps: float > 0. Values below it are clamped to it.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    if _no_elements(x):
        return _empty_pool(x, axes, keepdims)
    # `where`, not `maximum`, for float64 on torch; NaN < eps is false, so a
    # NaN stays NaN.
    eps = ops.convert_to_tensor(eps, dtype=x.dtype)  # not via float32
    logits = p * ops.log(ops.where(x < eps, eps, x))
    terms, peak = _exp_shifted(logits, axes, mask)
    total = blocked_sum(terms, axes, keepdims=True)
    count = count_valid(x, axes, mask, keepdims=True)
    # The mean term is in (0, 1]; 1 / 1 where nothing is valid keeps the log
    # and its gradient finite.
    log_mean = ops.log(_nonzero(total) / _nonzero(count)) + peak
    # Zeros where nothing is valid: fully masked, or a size that turns out 0.
    pooled = _zeros_where_empty(ops.exp(log_mean / p), count)
    return pooled if keepdims else ops.squeeze(pooled, axis=axes)


def global_lse_pool(x, r, axes, mask=None, keepdims=False):
    """Log-sum-exp pooling `log(mean(exp(r * x))) / r`.

    Computed shifted by the largest valid `x`, `m`, as
    `m + log(mean(exp(r * (x - m)))) / r`, which cannot overflow for any
    `r > 0`. Where that mean is above 1/2 (`r` small against the spread of
    `x`, near average pooling), it is taken as `log1p(mean(expm1(...)))`
    instead, which keeps the small differences that `exp` rounds to 1:
    either way the error of the log term is a few units of roundoff times
    the spread of the valid values, whatever `r`. Both sums are
    `blocked_sum`s. NaN propagates, `+inf` gives `+inf`, a `-inf` adds
    nothing to the mean (but counts), and a channel of `-inf` only gives
    `-inf`.

    Args:
        x: tensor to be pooled.
        r: scalar tensor or float > 0. The sharpness.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.

    Example:

    >>> from keras_globalpool.pool_ops import global_lse_pool
    >>> x = np.array([[[0.0], [np.log(3.0)]]], "float32")  # exp(x) = 1, 3
    >>> np.round(keras.ops.convert_to_numpy(global_lse_pool(x, 1.0, (1,))), 5)
    array([[0.69315]], dtype=float32)
    """
    if _no_elements(x):
        return _empty_pool(x, axes, keepdims)
    peak = _valid_peak(x, axes, mask)
    shifted = r * ops.subtract(x, peak)  # <= 0 at valid positions
    if mask is not None:
        # A double `where`: masked positions take part in neither the value
        # nor the gradient.
        shifted = ops.where(mask, shifted, 0.0)
    terms, small_terms = ops.exp(shifted), ops.expm1(shifted)
    if mask is not None:
        terms = ops.where(mask, terms, 0.0)
        small_terms = ops.where(mask, small_terms, 0.0)
    count = count_valid(x, axes, mask, keepdims=True)
    divisor = _nonzero(count)
    # Where nothing is valid, 1 in place of the sum keeps the log finite; a
    # sum of 0 with valid positions (all -inf) gives -inf.
    total = ops.where(count == 0, 1.0, blocked_sum(terms, axes, keepdims=True))
    small_mean = blocked_sum(small_terms, axes, keepdims=True) / divisor
    near_mean = small_mean > -0.5
    log_mean = ops.where(
        near_mean,
        ops.log1p(ops.where(near_mean, small_mean, 0.0)),
        ops.log(total / divisor),
    )
    pooled = _zeros_where_empty(peak + log_mean / r, count)
    return pooled if keepdims else ops.squeeze(pooled, axis=axes)


def normalize_scores(logits, axes, mask=None, normalize="sigmoid"):
    """Turns attention logits into weights that sum to 1 over `axes`.

    `"sigmoid"` gives `sigmoid(z) / sum(sigmoid(z))`, computed as a softmax of
    `log_sigmoid(z)` so that the sum never underflows to zero; `"softmax"`
    gives `softmax(z)`. The softmax is shifted by the largest valid logit, so
    masked positions never take part, whatever their logits: finite logits
    give finite weights that sum to 1, and a NaN logit makes its sample NaN.
    A fully masked sample, or one with no position, gets all-zero weights.

    Args:
        logits: tensor of attention logits with a channel axis of size 1;
            finite or NaN, not `inf`.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `logits`.
        normalize: `"sigmoid"` or `"softmax"`.

    Returns:
        The weights, shaped like `logits`.
    """
    if _no_elements(logits):
        return logits
    if normalize == "sigmoid":
        logits = ops.log_sigmoid(logits)
    weights, _ = _exp_shifted(logits, axes, mask)
    return weights / _nonzero(blocked_sum(weights, axes, keepdims=True))


def global_weighted_pool(x, weights, axes, keepdims=False):
    """Sum of `x` weighted by `weights` (which sum to 1) over `axes`.

    Summed with `blocked_sum`.

    Args:
        x: tensor to be pooled; masked positions must already hold zeros.
        weights: tensor broadcastable to `x`.
        axes: tuple of int. The spatial axes.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    return blocked_sum(x * weights, axes, keepdims)


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
    identity = ops.eye(matrices.shape[-1], dtype=matrices.dtype)
    trace = ops.trace(matrices, axis1=-2, axis2=-1)[:, None, None]
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


def gated_attention_logits(
    features, hidden_kernel, hidden_bias, score_kernel, gate_kernel=None, gate_bias=None
):
    """Ilse et al.'s attention score `w^T (tanh(V h + b) * sigmoid(U h + c))`.

    Without `gate_kernel`, the ungated score `w^T tanh(V h + b)`. The
    pre-activations are made finite first (`inf` to the largest finite
    value, the NaN of `inf - inf` to 0), so finite features always give
    finite scores: `tanh` and `sigmoid` saturate instead. A position whose
    features hold a NaN gets a NaN score, so the NaN spreads to its sample.

    Args:
        features: tensor of shape `(batch, *positions, channels)`.
        hidden_kernel: `V^T`, of shape `(channels, units)`.
        hidden_bias: `b`, of shape `(units,)`.
        score_kernel: `w`, of shape `(units, 1)`.
        gate_kernel: optional `U^T`, of shape `(channels, units)`.
        gate_bias: `c`, of shape `(units,)`; given with `gate_kernel`.

    Returns:
        The scores, of shape `(batch, *positions, 1)`.

    Example:

    >>> from keras_globalpool.pool_ops import gated_attention_logits
    >>> h = np.array([[[0.0], [100.0]]], "float32")
    >>> ones, zeros = np.ones((1, 1), "float32"), np.zeros(1, "float32")
    >>> z = gated_attention_logits(h, ones, zeros, 2 * ones, ones, zeros)
    >>> np.round(keras.ops.convert_to_numpy(z)[0, :, 0], 4).tolist()
    [0.0, 2.0]
    """
    # `einsum`, not `matmul` or `tensordot`, with explicit subscripts: see
    # `GlobalAttentionPooling._logits`.
    positions = "bxyz"[: len(features.shape) - 1]

    def dense(kernel, bias):
        pre = ops.einsum(f"{positions}c,cu->{positions}u", features, kernel) + bias
        return ops.nan_to_num(pre, nan=0.0)

    # tanh(z) = 2 sigmoid(2z) - 1: Keras's jax `tanh` computes float64 in
    # float32, its `sigmoid` does not.
    hidden = 2.0 * ops.sigmoid(2.0 * dense(hidden_kernel, hidden_bias)) - 1.0
    if gate_kernel is not None:
        hidden = hidden * ops.sigmoid(dense(gate_kernel, gate_bias))
    logits = ops.einsum(f"{positions}u,uk->{positions}k", hidden, score_kernel)
    has_nan = ops.any(ops.isnan(features), axis=-1, keepdims=True)
    return ops.where(has_nan, float("nan"), logits)


# A layer norm input beyond the first magnitude is scaled by the second (both
# powers of two) first: the squares of the centred values then stay finite,
# for channel counts up to 2**30.
_NORM_RANGE = {"float32": (2.0**48, 2.0**-80), "float64": (2.0**480, 2.0**-544)}


def layer_norm(x, scale, bias, epsilon=1e-5):
    """torch's `nn.LayerNorm` over the last axis of a float32 or float64 `x`.

    `(x - mean) / sqrt(var + epsilon) * scale + bias`, with the biased
    variance, as torch (and timm) compute it. Two steps keep it accurate
    and finite where the plain formula is not, and change nothing in exact
    arithmetic:

    - the centred values are centred again by their own mean. A float32
      mean is off by a roundoff of the values' size, which the plain
      formula subtracts from every channel: for channels that agree to 6
      digits (`1e4 + 0.01 z`) its normalized values are 5% off (920,000
      unit roundoffs). Twice centred, the error is a few roundoffs of the
      channels' spread (1.5 there; `tests/test_layer_reliability.py`).
    - a position holding a value beyond `2**48` (`2**480` in float64) is
      scaled by `2**-80` (`2**-544`), and `epsilon` by its square: exact,
      so finite inputs up to the dtype's largest value give finite outputs.
      Elsewhere the result is bit-identical to the unscaled one.

    The sums over the channels are `blocked_sum`s.

    Args:
        x: float32 or float64 tensor; its last axis is normalized.
        scale: tensor of shape `(x.shape[-1],)`.
        bias: tensor of shape `(x.shape[-1],)`.
        epsilon: float > 0. Added to the variance.

    Returns:
        The normalized tensor, shaped like `x`.

    Example:

    >>> from keras_globalpool.pool_ops import layer_norm
    >>> x = np.array([[1e6 + 1, 1e6 + 2, 1e6 + 3]], "float32")
    >>> y = layer_norm(x, np.ones(3, "float32"), np.zeros(3, "float32"))
    >>> np.round(keras.ops.convert_to_numpy(y).astype("float64"), 4).tolist()
    [[-1.2247, 0.0, 1.2247]]
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    limit, down = _NORM_RANGE["float64" if dtype == "float64" else "float32"]
    large = ops.any(ops.abs(x) > limit, axis=-1, keepdims=True)
    x = ops.where(large, x * down, x)
    epsilon = ops.where(
        large,
        ops.convert_to_tensor(epsilon * down * down, dtype=x.dtype),
        ops.convert_to_tensor(epsilon, dtype=x.dtype),
    )
    channels = x.shape[-1]
    centred = x - blocked_sum(x, (-1,), keepdims=True) / channels
    centred = centred - blocked_sum(centred, (-1,), keepdims=True) / channels
    variance = blocked_sum(centred * centred, (-1,), keepdims=True) / channels
    denominator = variance + epsilon
    # 0 only where a scaled `epsilon` underflows and the values are all
    # equal: their centred values are 0 too.
    denominator = ops.where(denominator == 0, 1.0, denominator)
    return centred / ops.sqrt(denominator) * scale + bias


def global_power_weighted_pool(
    x, weights, axes, gamma, mask=None, eps=1e-6, keepdims=False
):
    """SimPool's power mean: `sum(w * (x - min(x) + eps) ** gamma) ** (1 / gamma)`.

    timm's `SimPool2d` with `gamma`: the minimum is each sample's and
    channel's, over the valid positions, so the powered values are at least
    `eps` (and the result is not shifted back). The sum is a `blocked_sum`.
    A sample with no valid position pools to zeros.

    Args:
        x: tensor to be pooled; masked positions must already hold zeros.
        weights: tensor broadcastable to `x`, summing to 1 over `axes`.
        axes: tuple of int. The spatial axes.
        gamma: float > 0. The exponent.
        mask: optional boolean tensor broadcastable to `x`.
        eps: float > 0. Added to the shifted values.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.

    Example:

    >>> from keras_globalpool.pool_ops import global_power_weighted_pool
    >>> x = np.array([[[1.0], [4.0]]], "float32")  # shifted: eps, 3 + eps
    >>> w = np.full((1, 2, 1), 0.5, "float32")
    >>> y = global_power_weighted_pool(x, w, (1,), gamma=2.0)  # sqrt(9 / 2)
    >>> np.round(keras.ops.convert_to_numpy(y).astype("float64"), 5).tolist()
    [[2.12132]]
    """
    if _no_elements(x):
        return _empty_pool(x, axes, keepdims)
    low = x if mask is None else ops.where(mask, x, float("inf"))
    low = ops.min(low, axis=axes, keepdims=True)
    low = ops.where(ops.isinf(low), 0.0, low)  # +inf: nothing is valid
    shifted = ops.subtract(x, low) + eps
    if mask is not None:
        # A double `where`: masked positions take part in neither the
        # value nor the gradient.
        shifted = ops.where(mask, shifted, 1.0)
    # The exponents in `x`'s dtype: Keras's torch `power` takes a Python
    # float as float32, and 1 / 1.5 in float32 is 3e-8 off.
    power, root = (ops.convert_to_tensor(e, dtype=x.dtype) for e in (gamma, 1 / gamma))
    total = blocked_sum(ops.power(shifted, power) * weights, axes, keepdims=True)
    # 0 where nothing is valid (the weights are 0): 1 in its place keeps
    # the power's gradient finite. A NaN stays NaN.
    empty = total == 0
    pooled = ops.where(empty, 0.0, ops.power(ops.where(empty, 1.0, total), root))
    return pooled if keepdims else ops.squeeze(pooled, axis=axes)


# The weights `global_sim_pool` reads; the biases and the query and key norms
# are optional.
SIM_POOL_WEIGHTS = (
    "norm_gamma",
    "norm_beta",
    "query_kernel",
    "query_bias",
    "key_kernel",
    "key_bias",
    "query_norm_gamma",
    "query_norm_beta",
    "key_norm_gamma",
    "key_norm_beta",
)


def global_sim_pool(
    features, weights, num_heads=1, mask=None, gamma=None, epsilon=1e-5
):
    """SimPool (Psomas et al., ICCV 2023) as timm's `SimPool2d` computes it.

    With `h = layer_norm(features)`: the query is the mean of the features
    (not normalized) over the valid positions, projected by
    `query_kernel`; the keys are `h` projected by `key_kernel`; each head's
    weights are the softmax over the valid positions of its query-key
    products times `head_dim ** -0.5`; the values are `h` itself, and each
    head pools its `head_dim` channels of them with its weights: the
    weighted sum, or `global_power_weighted_pool` with `gamma`. Channel
    `c` belongs to head `c // head_dim`, as in timm's reshape. The query
    and key norms, when given, are layer norms over each head's
    `head_dim` channels.

    A NaN or an infinite value at a valid position makes its sample's
    weights and output NaN. Logits that overflow from finite features (a
    query of huge values) are made finite, as the attention layers' are, so
    the weights stay finite; `layer_norm` keeps the values finite.

    Args:
        features: float32 or float64 tensor of shape
            `(batch, *positions, channels)`; masked positions must hold
            zeros.
        weights: dict mapping names of `SIM_POOL_WEIGHTS` to tensors:
            `norm_gamma` and `norm_beta` of shape `(channels,)`,
            `query_kernel` and `key_kernel` of shape `(channels, channels)`
            (input channels first), optionally `query_bias` and `key_bias`
            of shape `(channels,)` and the four norm weights of shape
            `(head_dim,)`.
        num_heads: int. Must divide `channels`.
        mask: optional boolean tensor of shape `(batch, *positions, 1)`.
        gamma: optional float > 0. The power mean's exponent.
        epsilon: float > 0. The layer norms' epsilon.

    Returns:
        `(pooled, scores)`: `(batch, channels)` and the weights of shape
        `(batch, *positions, num_heads)`.

    Example:

    >>> from keras_globalpool.pool_ops import global_sim_pool
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    >>> ones, zeros = np.ones(4, "float32"), np.zeros(4, "float32")
    >>> eye = np.eye(4, dtype="float32")
    >>> weights = {"norm_gamma": ones, "norm_beta": zeros,
    ...            "query_kernel": eye, "key_kernel": eye}
    >>> pooled, scores = global_sim_pool(x, weights, num_heads=2)
    >>> tuple(pooled.shape), tuple(scores.shape)
    ((2, 4), (2, 5, 2))
    """
    rank = len(features.shape)
    axes = tuple(range(1, rank - 1))
    channels = features.shape[-1]
    head_dim = channels // num_heads
    positions = "xyz"[: rank - 2]

    def projected(x, name, subscripts):
        kernel = ops.reshape(weights[f"{name}_kernel"], (channels, num_heads, head_dim))
        # `einsum` with explicit subscripts: see `GlobalAttentionPooling._logits`.
        x = ops.einsum(subscripts, x, kernel)
        if weights.get(f"{name}_bias") is not None:
            x = x + ops.reshape(weights[f"{name}_bias"], (num_heads, head_dim))
        if weights.get(f"{name}_norm_gamma") is not None:
            scale, bias = weights[f"{name}_norm_gamma"], weights[f"{name}_norm_beta"]
            x = layer_norm(x, scale, bias, epsilon)
        return x

    values = layer_norm(features, weights["norm_gamma"], weights["norm_beta"], epsilon)
    query = global_avg_pool(features, axes, mask)
    query = projected(query, "query", "bc,chd->bhd") * head_dim**-0.5
    keys = projected(values, "key", f"b{positions}c,chd->b{positions}hd")
    logits = ops.einsum(f"bhd,b{positions}hd->b{positions}h", query, keys)
    # Where the features hold NaN or inf, so do the values (the layer norm
    # of inf is inf - inf): the logit keeps a NaN, which spreads to the
    # sample's weights.
    undefined = ops.logical_not(ops.all(ops.isfinite(features), axis=-1, keepdims=True))
    logits = ops.where(undefined, float("nan"), ops.nan_to_num(logits, nan=0.0))
    scores = normalize_scores(logits, axes, mask, "softmax")
    per_channel = scores if num_heads == 1 else ops.repeat(scores, head_dim, axis=-1)
    if gamma is None:
        pooled = global_weighted_pool(values, per_channel, axes)
    else:
        pooled = global_power_weighted_pool(values, per_channel, axes, gamma, mask)
    return pooled, scores
