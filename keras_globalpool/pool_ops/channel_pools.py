"""avg, max, mixed, GeM and LSE: one value per channel."""

import math

from keras import ops

from keras_globalpool import fast_paths
from keras_globalpool.pool_ops.reductions import (
    SUM_BLOCK,
    _empty_pool,
    _exp_shifted,
    _no_elements,
    _nonzero,
    _static_sizes,
    _valid_peak,
    _where_valid,
    _zeros_where_empty,
    blocked_sum,
    count_valid,
)


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
        if _static_sizes(x, axes):
            # A count known now is a Python number, and not 0: no tensor to
            # make and guard, which on torch's eager calls cost more than
            # the sum of a small map.
            count = math.prod(x.shape[axis] for axis in axes)
            return blocked_sum(x, axes, keepdims) / count
    # A sum over a count, not `ops.mean`: a map with no position pools to 0
    # rather than 0 / 0, and Keras's jax and torch `mean` compute float64 in
    # float32.
    total = blocked_sum(x, axes, keepdims)
    count = count_valid(x, axes, mask, keepdims)
    return total / _nonzero(count)


def global_max_pool(x, axes, mask=None, keepdims=False):
    """Maximum over the valid positions.

    Args:
        x: tensor to be pooled; masked positions must hold finite values
            (the layers zero them).
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    if _no_elements(x):
        return _empty_pool(x, axes, keepdims)
    if mask is not None:
        return _masked_max_pool(x, axes, mask, keepdims)
    # The max of nothing is -inf: a size 0 at run time.
    pooled = ops.max(x, axis=axes, keepdims=keepdims)
    return _where_valid(pooled, x, axes, mask, keepdims)


def _masked_max_pool(x, axes, mask, keepdims):
    """`global_max_pool` with a mask: masked positions lowered to -inf.

    Lowered by subtracting `inf`, not with `where(mask, x, -inf)`: Keras's
    ONNX export (tf2onnx) writes a 16-bit `where` as `c * a + (1 - c) * b`,
    where `0 * -inf` is NaN. `x - 0` is `x` exactly, NaN and -0.0 included.
    A sample with no valid position is not lowered, so that its finite max
    (not -inf, which would leak the same way) is replaced by zeros.
    """
    count = count_valid(x, axes, mask, keepdims=True)
    kept = ops.logical_or(mask, count == 0)
    # Constant branches in float32: tf2onnx keeps those a true `Where`.
    lowering = ops.cast(ops.where(kept, 0.0, float("inf")), x.dtype)
    pooled = ops.max(x - lowering, axis=axes, keepdims=True)
    pooled = _zeros_where_empty(pooled, count)
    return pooled if keepdims else ops.squeeze(pooled, axis=axes)


def global_avg_max_pool(x, axes, mask=None, keepdims=False, peaks=None):
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
        peaks: optional tensor of `x`'s values in the 16-bit dtype they were
            cast from. Where the fast paths do not apply, the maximum is
            taken over it, exactly, and cast to `x`'s dtype: a maximum
            neither rounds nor overflows, and under XLA on CPU the maximum
            of a cast map, fused with its sum, ran 5 to 8 times slower
            than the two reductions apart (jax, `mixed_bfloat16`).

    Returns:
        `(avg, max)`, the two pooled tensors.
    """
    if _no_elements(x):
        empty = _empty_pool(x, axes, keepdims)
        return empty, empty
    window = fast_paths.pooling_window(x, axes) if mask is None else None
    if window is None:
        peak = global_max_pool(x if peaks is None else peaks, axes, mask, keepdims)
        return global_avg_pool(x, axes, mask, keepdims), ops.cast(peak, x.dtype)
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
