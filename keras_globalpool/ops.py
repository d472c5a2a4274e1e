"""Backend-agnostic global-pooling math, written with `keras.ops` only.

Each function reduces `x` over the spatial `axes`. `mask`, when given, is a
boolean tensor broadcastable to `x` (a 1 on the channel axis) that marks the
valid positions; masked positions never change the result, whatever they hold,
and a sample with no valid position pools to zeros. The layers cast to float32
before calling these functions when their compute dtype is 16-bit.

Example:

>>> x = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
>>> global_avg_pool(x, axes=(1, 2)).shape
(1, 2)
"""

from keras import ops

from keras_globalpool import fast_paths

# Logits of masked positions: exp() of it underflows to exactly zero, yet it
# stays finite, so no inf - inf = NaN appears in the normalization.
_MASKED_LOGIT = -1e30


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
    if mask is None:
        window = fast_paths.pooling_window(x, axes)
        if window is not None:
            return fast_paths.window_avg_pool(x, window, axes, keepdims)
        return ops.mean(x, axis=axes, keepdims=keepdims)
    total = ops.sum(x, axis=axes, keepdims=keepdims)
    count = count_valid(x, axes, mask, keepdims)
    return total / ops.maximum(count, 1.0)


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
    if mask is None:
        return ops.max(x, axis=axes, keepdims=keepdims)
    x = ops.where(mask, x, float("-inf"))
    pooled = ops.max(x, axis=axes, keepdims=keepdims)
    return _where_valid(pooled, axes, mask, keepdims)


def global_gem_pool(x, p, axes, mask=None, eps=1e-6, keepdims=False):
    """Generalized mean `mean(max(x, eps) ** p) ** (1 / p)`.

    Computed as `exp((logsumexp(p * log(max(x, eps))) - log(n)) / p)`, which
    equals the formula above and cannot overflow for any `p` or input size.

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
    logits = p * ops.log(ops.maximum(x, eps))
    if mask is not None:
        logits = ops.where(mask, logits, _MASKED_LOGIT)
    log_total = ops.logsumexp(logits, axis=axes, keepdims=keepdims)
    count = ops.maximum(count_valid(x, axes, mask, keepdims), 1.0)
    pooled = ops.exp((log_total - ops.log(count)) / p)
    return _where_valid(pooled, axes, mask, keepdims)


def normalize_scores(logits, axes, mask=None, normalize="sigmoid"):
    """Turns attention logits into weights that sum to 1 over `axes`.

    `"sigmoid"` gives `sigmoid(z) / sum(sigmoid(z))`, computed as a softmax of
    `log_sigmoid(z)` so that the sum never underflows to zero; `"softmax"`
    gives `softmax(z)`. A fully masked sample gets all-zero weights.

    Args:
        logits: tensor of attention logits with a channel axis of size 1.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `logits`.
        normalize: `"sigmoid"` or `"softmax"`.

    Returns:
        The weights, shaped like `logits`.
    """
    if normalize == "sigmoid":
        logits = ops.log_sigmoid(logits)
    if mask is not None:
        logits = ops.where(mask, logits, _MASKED_LOGIT)
    shifted = logits - ops.max(logits, axis=axes, keepdims=True)
    weights = ops.exp(shifted)
    weights = weights / ops.sum(weights, axis=axes, keepdims=True)
    if mask is not None:
        weights = weights * ops.cast(mask, weights.dtype)
    return weights


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
