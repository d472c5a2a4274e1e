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
attention's weights and weighted sum, LSE's sums of exponentials) is a
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

    The axis keeps its place with `ceil(size / block)` positions; zeros pad
    the last run. Every other axis keeps its size, known or not.
    """
    size = ops.shape(x)[axis]
    if not isinstance(size, int) or size % block:
        padding = [(0, 0)] * len(x.shape)
        padding[axis] = (0, (-size) % block)
        x = ops.pad(x, padding)
    shape = ops.shape(x)
    runs = (*shape[:axis], shape[axis] // block, block, *shape[axis + 1 :])
    return ops.sum(ops.reshape(x, runs), axis=axis + 1) * _SCALE


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
