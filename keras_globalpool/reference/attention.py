"""Attention pooling and gated-attention MIL pooling, forward and backward."""

import numpy as np

from keras_globalpool.reference.layout import NORMALIZATIONS, _check_option, _flatten
from keras_globalpool.reference.normalization import _masked_softmax


def _log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def _attention_parts(x, valid, weights, normalize):
    """Returns `(pre, hidden, logits, attention)`, each per position."""
    _check_option("normalize", normalize, NORMALIZATIONS)
    hidden_kernel, hidden_bias, score_kernel, score_bias = (
        np.asarray(w, dtype=np.float64) for w in weights
    )
    pre = x @ hidden_kernel + hidden_bias
    hidden = np.maximum(pre, 0.0)
    logits = (hidden @ score_kernel + score_bias)[..., 0]
    # sigmoid(z) / sum(sigmoid(z)) is the softmax of log(sigmoid(z)); this
    # form stays finite where sigmoid(z) underflows to 0.
    scores = _log_sigmoid(logits) if normalize == "sigmoid" else logits
    return pre, hidden, logits, _masked_softmax(scores, valid)


def _gated_attention_parts(x, valid, weights):
    """Returns `(tanh, gate, hidden, attention)`, each per position; `gate`
    is None when ungated."""
    hidden_kernel, hidden_bias, score_kernel, gate_kernel, gate_bias = (
        None if w is None else np.asarray(w, dtype=np.float64) for w in weights
    )
    tanh = np.tanh(x @ hidden_kernel + hidden_bias)
    if gate_kernel is None:
        gate, hidden = None, tanh
    else:
        gate = 0.5 * (1.0 + np.tanh(0.5 * (x @ gate_kernel + gate_bias)))
        hidden = tanh * gate
    logits = (hidden @ score_kernel)[..., 0]
    return tanh, gate, hidden, _masked_softmax(logits, valid)


def attention_pool(
    x,
    hidden_kernel,
    hidden_bias,
    score_kernel,
    score_bias,
    normalize="sigmoid",
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """Attention-weighted mean; the scoring branch is Dense, ReLU, Dense.

    With channels last, `z = relu(x @ hidden_kernel + hidden_bias) @
    score_kernel + score_bias` gives one logit per position. The weights are
    `sigmoid(z) / sum(sigmoid(z))` or `softmax(z)` over the valid positions
    (0 at masked ones), and `pooled[c] = sum_n w[n] * x[n, c]`.

    Args:
        x: array of rank 3, 4 or 5 with C channels.
        hidden_kernel: array of shape `(C, U)`.
        hidden_bias: array of shape `(U,)`.
        score_kernel: array of shape `(U, 1)`.
        score_bias: array of shape `(1,)`.
        normalize: `"sigmoid"` or `"softmax"`.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `(pooled, weights)`: the pooled float64 array, and the weights of
        shape `(batch, *spatial)`.

    Example:

    >>> from keras_globalpool.reference import attention_pool
    >>> x = np.array([[[0.0], [np.log(3.0)]]])
    >>> _, w = attention_pool(x, [[1.0]], [0.0], [[1.0]], [0.0], "softmax")
    >>> w
    array([[0.25, 0.75]])
    """
    weights = (hidden_kernel, hidden_bias, score_kernel, score_bias)
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    attention = _attention_parts(x, valid, weights, normalize)[-1]
    pooled = np.einsum("bn,bnc->bc", attention, x)
    return layout.pooled(pooled), layout.positions(attention)


def gated_attention_pool(
    x,
    hidden_kernel,
    hidden_bias,
    score_kernel,
    gate_kernel=None,
    gate_bias=None,
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """Gated-attention MIL pooling (Ilse et al., 2018).

    With channels last, each position gets the logit
    `z = (tanh(x @ hidden_kernel + hidden_bias) * sigmoid(x @ gate_kernel +
    gate_bias)) @ score_kernel`, or `tanh(...) @ score_kernel` without
    `gate_kernel`. The weights are `softmax(z)` over the valid positions (0
    at masked ones), and `pooled[c] = sum_n w[n] * x[n, c]`.

    Args:
        x: array of rank 3, 4 or 5 with C channels.
        hidden_kernel: array of shape `(C, U)`, the paper's `V` transposed.
        hidden_bias: array of shape `(U,)`.
        score_kernel: array of shape `(U, 1)`, the paper's `w`.
        gate_kernel: optional array of shape `(C, U)`, the paper's `U`
            transposed. Defaults to `None`: ungated.
        gate_bias: array of shape `(U,)`, with `gate_kernel`.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `(pooled, weights)`: the pooled float64 array, and the weights of
        shape `(batch, *spatial)`.

    Example:

    >>> from keras_globalpool.reference import gated_attention_pool
    >>> x = np.array([[[0.0], [20.0]]])
    >>> _, w = gated_attention_pool(x, [[1.0]], [0.0], [[np.log(3.0)]])
    >>> np.round(w, 6)
    array([[0.25, 0.75]])
    >>> _, w = gated_attention_pool(x, [[1.0]], [0.0], [[2.0]], [[0.0]], [0.0])
    >>> np.round(w, 6)
    array([[0.268941, 0.731059]])
    """
    weights = (hidden_kernel, hidden_bias, score_kernel, gate_kernel, gate_bias)
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    attention = _gated_attention_parts(x, valid, weights)[-1]
    pooled = np.einsum("bn,bnc->bc", attention, x)
    return layout.pooled(pooled), layout.positions(attention)


def attention_pool_grad(
    x,
    dy,
    hidden_kernel,
    hidden_bias,
    score_kernel,
    score_bias,
    normalize="sigmoid",
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """Gradient of `attention_pool`'s pooled output.

    Args:
        x: the input of `attention_pool`.
        dy: gradient of the loss with respect to the pooled output.
        hidden_kernel: array of shape `(C, U)`.
        hidden_bias: array of shape `(U,)`.
        score_kernel: array of shape `(U, 1)`.
        score_bias: array of shape `(1,)`.
        normalize: `"sigmoid"` or `"softmax"`.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x", "hidden_kernel", "hidden_bias", "score_kernel", "score_bias"}`,
        each gradient shaped like its argument.

    Example:

    >>> from keras_globalpool.reference import attention_pool_grad
    >>> x, dy = np.ones((1, 3, 2)), np.ones((1, 2))
    >>> grads = attention_pool_grad(x, dy, np.ones((2, 1)), [0.0], [[1.0]], [0.0])
    >>> grads["x"].shape, grads["hidden_kernel"].shape
    ((1, 3, 2), (2, 1))
    """
    weights = (hidden_kernel, hidden_bias, score_kernel, score_bias)
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    dy = layout.flat_pooled(dy, x.shape[-1])
    pre, hidden, logits, attention = _attention_parts(x, valid, weights, normalize)
    hidden_kernel = np.asarray(hidden_kernel, dtype=np.float64)
    score_kernel = np.asarray(score_kernel, dtype=np.float64)

    # pooled = sum_n a_n x_n, with a = softmax(scores) over valid positions.
    dx = attention[..., None] * dy[:, None, :]
    d_attention = np.einsum("bnc,bc->bn", x, dy)
    d_scores = attention * (
        d_attention - np.sum(attention * d_attention, axis=1, keepdims=True)
    )
    if normalize == "sigmoid":
        # d log(sigmoid(z)) / dz = sigmoid(-z)
        d_logits = d_scores * np.exp(_log_sigmoid(-logits))
    else:
        d_logits = d_scores
    d_hidden = d_logits[..., None] * score_kernel[:, 0]
    d_pre = np.where(pre > 0, d_hidden, 0.0)
    dx = np.where(valid[..., None], dx + d_pre @ hidden_kernel.T, 0.0)
    return {
        "x": layout.feature_map(dx),
        "hidden_kernel": np.einsum("bnc,bnu->cu", x, d_pre),
        "hidden_bias": d_pre.sum(axis=(0, 1)),
        "score_kernel": np.einsum("bnu,bn->u", hidden, d_logits)[:, None],
        "score_bias": np.array([d_logits.sum()]),
    }


def gated_attention_pool_grad(
    x,
    dy,
    hidden_kernel,
    hidden_bias,
    score_kernel,
    gate_kernel=None,
    gate_bias=None,
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """Gradient of `gated_attention_pool`'s pooled output.

    Args:
        x: the input of `gated_attention_pool`.
        dy: gradient of the loss with respect to the pooled output.
        hidden_kernel: array of shape `(C, U)`.
        hidden_bias: array of shape `(U,)`.
        score_kernel: array of shape `(U, 1)`.
        gate_kernel: optional array of shape `(C, U)`.
        gate_bias: array of shape `(U,)`, with `gate_kernel`.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x", "hidden_kernel", "hidden_bias", "score_kernel"}`, plus
        `"gate_kernel"` and `"gate_bias"` when gated, each gradient shaped
        like its argument.

    Example:

    >>> from keras_globalpool.reference import gated_attention_pool_grad
    >>> x, dy = np.ones((1, 3, 2)), np.ones((1, 2))
    >>> grads = gated_attention_pool_grad(
    ...     x, dy, np.ones((2, 4)), np.zeros(4), np.ones((4, 1)),
    ...     np.ones((2, 4)), np.zeros(4))
    >>> sorted(grads), grads["gate_kernel"].shape
    (['gate_bias', 'gate_kernel', 'hidden_bias', 'hidden_kernel', 'score_kernel', 'x'], (2, 4))
    """  # noqa: E501
    weights = (hidden_kernel, hidden_bias, score_kernel, gate_kernel, gate_bias)
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    dy = layout.flat_pooled(dy, x.shape[-1])
    tanh, gate, hidden, attention = _gated_attention_parts(x, valid, weights)
    hidden_kernel = np.asarray(hidden_kernel, dtype=np.float64)
    score_kernel = np.asarray(score_kernel, dtype=np.float64)

    # pooled = sum_n a_n x_n, with a = softmax(z) over valid positions.
    dx = attention[..., None] * dy[:, None, :]
    d_attention = np.einsum("bnc,bc->bn", x, dy)
    d_logits = attention * (
        d_attention - np.sum(attention * d_attention, axis=1, keepdims=True)
    )
    d_hidden = d_logits[..., None] * score_kernel[:, 0]
    d_tanh = d_hidden if gate is None else d_hidden * gate
    d_pre = d_tanh * (1.0 - tanh**2)
    dx = dx + d_pre @ hidden_kernel.T
    grads = {
        "hidden_kernel": np.einsum("bnc,bnu->cu", x, d_pre),
        "hidden_bias": d_pre.sum(axis=(0, 1)),
        "score_kernel": np.einsum("bnu,bn->u", hidden, d_logits)[:, None],
    }
    if gate is not None:
        d_gate_pre = d_hidden * tanh * gate * (1.0 - gate)
        dx = dx + d_gate_pre @ np.asarray(gate_kernel, dtype=np.float64).T
        grads["gate_kernel"] = np.einsum("bnc,bnu->cu", x, d_gate_pre)
        grads["gate_bias"] = d_gate_pre.sum(axis=(0, 1))
    dx = np.where(valid[..., None], dx, 0.0)
    return {"x": layout.feature_map(dx), **grads}
