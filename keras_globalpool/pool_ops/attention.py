"""Attention scores over positions, the pooling they weight, gated-attention logits."""

from keras import ops

from keras_globalpool.pool_ops.reductions import (
    _exp_shifted,
    _no_elements,
    _nonzero,
    blocked_sum,
)


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


def softmax_cancelled(term):
    """A term of the logits that the softmax cancels: zeros with its gradient.

    A term that is the same at every position of a softmax changes no
    weight, so its exact value is 0; its gradient, 0 but for roundoff, is
    kept, so that the weights it comes from get one rather than none (which
    optimizers warn about). Adding the term itself would be the same in
    exact arithmetic, but not in float32: XLA recomputes cheap logits in
    each fusion that reads them, contracting `a * b + term` into one fused
    multiply-add in some and not in others, and where the logits are large
    the two roundings differ by more than `exp` can take: every weight of a
    sample underflowed to 0 (jax, logits of 3.5e14).

    Args:
        term: tensor, broadcastable to the logits.

    Returns:
        Zeros shaped like `term`, whose gradient is `term`'s.

    Example:

    >>> from keras_globalpool.pool_ops import softmax_cancelled
    >>> keras.ops.convert_to_numpy(softmax_cancelled(np.array([1e30, 2.0]))).tolist()
    [0.0, 0.0]
    """
    term = ops.nan_to_num(term, nan=0.0)
    return term - ops.stop_gradient(term)


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
