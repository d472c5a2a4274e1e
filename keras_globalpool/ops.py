"""Backend-agnostic global-pooling math, written with `keras.ops` only.

Each function reduces `x` over the spatial `axes`. `mask`, when given, is a
boolean tensor broadcastable to `x` (a 1 on the channel axis) that marks the
valid positions; masked positions never change the result, whatever they hold,
and a sample with no valid position pools to zeros, as does a map with no
position at all (a spatial size of 0). A NaN at a valid position propagates as
in NumPy's `mean` and `max`. The layers cast to float32 before calling these
functions when their compute dtype is 16-bit.

Example:

>>> x = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
>>> global_avg_pool(x, axes=(1, 2)).shape
(1, 2)
"""

from keras import ops

from keras_globalpool import fast_paths


def _no_positions(x, axes):
    """Whether a spatial axis has a static size of 0: there is nothing to pool."""
    return any(x.shape[axis] == 0 for axis in axes)


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


def _where_valid(pooled, axes, mask, keepdims):
    """Replaces the result of fully masked samples by zeros."""
    if mask is None:
        return pooled
    any_valid = ops.any(mask, axis=axes, keepdims=keepdims)
    return ops.where(any_valid, pooled, ops.zeros_like(pooled))


def global_avg_pool(x, axes, mask=None, keepdims=False):
    """Mean over the valid positions.

    Args:
        x: tensor to be pooled; masked positions must already hold zeros.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    if mask is None and not _no_positions(x, axes):
        window = fast_paths.pooling_window(x, axes)
        if window is not None:
            return fast_paths.window_avg_pool(x, window, axes, keepdims)
    # A sum over a count, not `ops.mean`: a map with no position pools to 0
    # rather than 0 / 0, and Keras's jax and torch `mean` compute float64 in
    # float32.
    total = ops.sum(x, axis=axes, keepdims=keepdims)
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
    if _no_positions(x, axes):
        return _empty_pool(x, axes, keepdims)
    if mask is None:
        pooled = ops.max(x, axis=axes, keepdims=keepdims)
        if _static_sizes(x, axes):
            return pooled
        # A size known only at run time may be 0, where the max is -inf.
        return ops.where(count_valid(x, axes) > 0, pooled, ops.zeros_like(pooled))
    x = ops.where(mask, x, float("-inf"))
    pooled = ops.max(x, axis=axes, keepdims=keepdims)
    return _where_valid(pooled, axes, mask, keepdims)


def global_avg_max_pool(x, axes, mask=None, keepdims=False):
    """Mean and maximum over the valid positions, as mixed pooling needs them.

    Equal to `(global_avg_pool(...), global_max_pool(...))`, values and
    gradients, but faster where `fast_paths` applies: the means tell the
    max pool where a NaN must propagate.

    Args:
        x: tensor to be pooled; masked positions must already hold zeros.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        `(avg, max)`, the two pooled tensors.
    """
    if _no_positions(x, axes):
        empty = _empty_pool(x, axes, keepdims)
        return empty, empty
    window = fast_paths.pooling_window(x, axes) if mask is None else None
    if window is None:
        return (
            global_avg_pool(x, axes, mask, keepdims),
            global_max_pool(x, axes, mask, keepdims),
        )
    avg = fast_paths.window_avg_pool(x, window, axes, keepdims=True)
    peak = fast_paths.window_max_pool(x, window, axes, avg, keepdims)
    return (avg if keepdims else ops.squeeze(avg, axis=axes)), peak


def global_gem_pool(x, p, axes, mask=None, eps=1e-6, keepdims=False):
    """Generalized mean `mean(max(x, eps) ** p) ** (1 / p)`.

    Computed as `exp((logsumexp(p * log(max(x, eps))) - log(n)) / p)`, which
    equals the formula above and cannot overflow for any `p` or input size.
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
    if _no_positions(x, axes):
        return _empty_pool(x, axes, keepdims)
    # `where`, not `maximum`, for float64 on torch; NaN < eps is false, so a
    # NaN stays NaN.
    eps = ops.convert_to_tensor(eps, dtype=x.dtype)  # not via float32
    logits = p * ops.log(ops.where(x < eps, eps, x))
    if mask is None:
        log_total = ops.logsumexp(logits, axis=axes, keepdims=keepdims)
    else:
        terms, peak = _exp_shifted(logits, axes, mask)
        total = ops.sum(terms, axis=axes, keepdims=True)
        log_total = ops.log(_nonzero(total)) + peak
        if not keepdims:
            log_total = ops.squeeze(log_total, axis=axes)
    count = count_valid(x, axes, mask, keepdims)
    pooled = ops.exp((log_total - ops.log(_nonzero(count))) / p)
    return _where_valid(pooled, axes, mask, keepdims)


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
    if _no_positions(logits, axes):
        return logits
    if normalize == "sigmoid":
        logits = ops.log_sigmoid(logits)
    weights, _ = _exp_shifted(logits, axes, mask)
    return weights / _nonzero(ops.sum(weights, axis=axes, keepdims=True))


def global_weighted_pool(x, weights, axes, keepdims=False):
    """Sum of `x` weighted by `weights` (which sum to 1) over `axes`.

    Args:
        x: tensor to be pooled; masked positions must already hold zeros.
        weights: tensor broadcastable to `x`.
        axes: tuple of int. The spatial axes.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The pooled tensor.
    """
    return ops.sum(x * weights, axis=axes, keepdims=keepdims)
