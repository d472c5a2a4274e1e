"""Multi-head attention pooling with latent queries (MAP), forward and backward."""

import math

import numpy as np

from keras_globalpool.reference.layout import _flatten
from keras_globalpool.reference.normalization import (
    _layer_norm,
    _layer_norm_grad,
    _masked_softmax,
)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(z):
    return 0.5 * z * (1.0 + _erf(z / np.sqrt(2.0)))


def _gelu_grad(z):
    # d/dz z Phi(z) = Phi(z) + z phi(z)
    return 0.5 * (1.0 + _erf(z / np.sqrt(2.0))) + z * np.exp(-0.5 * z**2) / np.sqrt(
        2.0 * np.pi
    )


_MAP_WEIGHTS = (
    "latent",
    "query_kernel",
    "key_kernel",
    "value_kernel",
    "output_kernel",
    "output_bias",
    "query_bias",
    "key_bias",
    "value_bias",
    "query_norm_gamma",
    "query_norm_beta",
    "key_norm_gamma",
    "key_norm_beta",
    "mlp_norm_gamma",
    "mlp_norm_beta",
    "mlp_hidden_kernel",
    "mlp_hidden_bias",
    "mlp_output_kernel",
    "mlp_output_bias",
)


def _map_parts(x, valid, weights, num_heads):
    """Every intermediate of MAP on `(batch, positions, channels)`, by name.

    `weights` maps the names of `_MAP_WEIGHTS` to arrays or None: no bias
    without `query_bias`, no query/key norm without `query_norm_gamma`, no
    MLP without `mlp_hidden_kernel`.
    """
    w = {
        n: None if v is None else np.asarray(v, np.float64) for n, v in weights.items()
    }
    batch, positions, channels = x.shape
    if channels % num_heads:
        raise ValueError(
            f"`num_heads` must divide the channels. Received: num_heads={num_heads}, "
            f"channels={channels}"
        )
    head_dim = channels // num_heads
    latent_len = w["latent"].shape[0]

    def dense(v, name):
        bias = w[f"{name}_bias"]
        out = v @ w[f"{name}_kernel"]
        return out if bias is None else out + bias

    p = {"w": w, "head_dim": head_dim, "scale": head_dim**-0.5}
    q = dense(w["latent"], "query").reshape(latent_len, num_heads, head_dim)
    k = dense(x, "key").reshape(batch, positions, num_heads, head_dim)
    p["v"] = dense(x, "value").reshape(batch, positions, num_heads, head_dim)
    if w["query_norm_gamma"] is not None:
        q, p["q_cache"] = _layer_norm(q, w["query_norm_gamma"], w["query_norm_beta"])
        k, p["k_cache"] = _layer_norm(k, w["key_norm_gamma"], w["key_norm_beta"])
    p["q"], p["k"] = q * p["scale"], k
    logits = np.einsum("lhd,bnhd->bhln", p["q"], k)
    p["attention"] = _masked_softmax(logits, valid[:, None, None, :])
    attended = np.einsum("bhln,bnhd->blhd", p["attention"], p["v"])
    p["attended"] = attended.reshape(batch, latent_len, channels)
    out = p["attended"] @ w["output_kernel"] + w["output_bias"]
    if w["mlp_hidden_kernel"] is not None:
        p["normed"], p["n_cache"] = _layer_norm(
            out, w["mlp_norm_gamma"], w["mlp_norm_beta"]
        )
        p["pre"] = p["normed"] @ w["mlp_hidden_kernel"] + w["mlp_hidden_bias"]
        p["hidden"] = _gelu(p["pre"])
        out = out + p["hidden"] @ w["mlp_output_kernel"] + w["mlp_output_bias"]
    pooled = out.mean(axis=1)
    p["pooled"] = np.where(valid.any(axis=1)[:, None], pooled, 0.0)
    return p


def multi_head_attention_pool(
    x,
    latent,
    query_kernel,
    key_kernel,
    value_kernel,
    output_kernel,
    output_bias,
    num_heads=1,
    query_bias=None,
    key_bias=None,
    value_bias=None,
    query_norm_gamma=None,
    query_norm_beta=None,
    key_norm_gamma=None,
    key_norm_beta=None,
    mlp_norm_gamma=None,
    mlp_norm_beta=None,
    mlp_hidden_kernel=None,
    mlp_hidden_bias=None,
    mlp_output_kernel=None,
    mlp_output_bias=None,
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """Multi-head attention pooling with learned latent queries (timm's
    `AttentionPoolLatent` with `pool_type="avg"`, the SigLIP head).

    With channels last, C channels, `H = num_heads` heads of `D = C / H`
    features and `L` latents: `q = latent @ query_kernel + query_bias`,
    `k = x @ key_kernel + key_bias` and `v = x @ value_kernel + value_bias`
    are split into heads (channel `h * D + d`), `q` and `k` optionally
    layer-normalized over `D`, and each head of each latent takes
    `softmax(q k^T / sqrt(D)) v` over the valid positions. The heads are
    concatenated, `o = attended @ output_kernel + output_bias`, and with
    an MLP `o = o + gelu(layer_norm(o) @ mlp_hidden_kernel +
    mlp_hidden_bias) @ mlp_output_kernel + mlp_output_bias` (exact GELU,
    norms of epsilon 1e-6). The output is the mean of `o` over the latents,
    0 for a sample with no valid position.

    Args:
        x: array of rank 3, 4 or 5 with C channels.
        latent: array of shape `(L, C)`.
        query_kernel, key_kernel, value_kernel, output_kernel: arrays of
            shape `(C, C)`.
        output_bias: array of shape `(C,)`.
        num_heads: int dividing C.
        query_bias, key_bias, value_bias: optional arrays of shape `(C,)`,
            given together.
        query_norm_gamma, query_norm_beta, key_norm_gamma, key_norm_beta:
            optional arrays of shape `(D,)`, given together: `qk_norm`.
        mlp_norm_gamma, mlp_norm_beta: arrays of shape `(C,)`, with the MLP.
        mlp_hidden_kernel: optional array of shape `(C, U)`: the MLP.
        mlp_hidden_bias: array of shape `(U,)`, with the MLP.
        mlp_output_kernel: array of shape `(U, C)`, with the MLP.
        mlp_output_bias: array of shape `(C,)`, with the MLP.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `(pooled, weights)`: the pooled float64 array, and the attention
        weights of shape `(batch, num_heads, L, *spatial)`.

    Example:

    >>> from keras_globalpool.reference import multi_head_attention_pool
    >>> x = np.array([[[0.0], [np.log(3.0)]]])
    >>> one = np.ones((1, 1))
    >>> pooled, w = multi_head_attention_pool(
    ...     x, one, one, one, one, one, np.zeros(1))
    >>> np.round(w, 6)
    array([[[[0.25, 0.75]]]])
    """
    weights = {name: value for name, value in locals().items() if name in _MAP_WEIGHTS}
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    p = _map_parts(x, valid, weights, num_heads)
    scores = p["attention"].reshape(p["attention"].shape[:3] + layout.spatial)
    return layout.pooled(p["pooled"]), scores


def multi_head_attention_pool_grad(
    x,
    dy,
    latent,
    query_kernel,
    key_kernel,
    value_kernel,
    output_kernel,
    output_bias,
    num_heads=1,
    query_bias=None,
    key_bias=None,
    value_bias=None,
    query_norm_gamma=None,
    query_norm_beta=None,
    key_norm_gamma=None,
    key_norm_beta=None,
    mlp_norm_gamma=None,
    mlp_norm_beta=None,
    mlp_hidden_kernel=None,
    mlp_hidden_bias=None,
    mlp_output_kernel=None,
    mlp_output_bias=None,
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """Gradient of `multi_head_attention_pool`'s pooled output.

    Args:
        x: the input of `multi_head_attention_pool`.
        dy: gradient of the loss with respect to the pooled output.
        latent, ..., mask: as for `multi_head_attention_pool`.

    Returns:
        `{"x", "latent", "query_kernel", "key_kernel", "value_kernel",
        "output_kernel", "output_bias"}` plus the gradient of each optional
        weight given, each shaped like its argument.

    Example:

    >>> from keras_globalpool.reference import multi_head_attention_pool_grad
    >>> x, dy, one = np.ones((1, 3, 2)), np.ones((1, 2)), np.eye(2)
    >>> grads = multi_head_attention_pool_grad(
    ...     x, dy, np.ones((1, 2)), one, one, one, one, np.zeros(2), num_heads=2)
    >>> grads["x"].shape, grads["latent"].shape
    ((1, 3, 2), (1, 2))
    """
    weights = {name: value for name, value in locals().items() if name in _MAP_WEIGHTS}
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    dy = layout.flat_pooled(dy, x.shape[-1])
    p = _map_parts(x, valid, weights, num_heads)
    w, attention = p["w"], p["attention"]
    batch, positions, channels = x.shape
    latent_len = w["latent"].shape[0]
    grads = {}

    # pooled = mean over the latents of `out`, 0 where nothing is valid.
    dy = np.where(valid.any(axis=1)[:, None], dy, 0.0)
    d_out = np.repeat(dy[:, None, :] / latent_len, latent_len, axis=1)
    d_proj = d_out
    if w["mlp_hidden_kernel"] is not None:
        grads["mlp_output_kernel"] = np.einsum("blu,blc->uc", p["hidden"], d_out)
        grads["mlp_output_bias"] = d_out.sum(axis=(0, 1))
        d_pre = (d_out @ w["mlp_output_kernel"].T) * _gelu_grad(p["pre"])
        grads["mlp_hidden_kernel"] = np.einsum("blc,blu->cu", p["normed"], d_pre)
        grads["mlp_hidden_bias"] = d_pre.sum(axis=(0, 1))
        d_normed = d_pre @ w["mlp_hidden_kernel"].T
        d_norm_in, grads["mlp_norm_gamma"], grads["mlp_norm_beta"] = _layer_norm_grad(
            d_normed, w["mlp_norm_gamma"], p["n_cache"]
        )
        d_proj = d_out + d_norm_in
    grads["output_kernel"] = np.einsum("blc,blo->co", p["attended"], d_proj)
    grads["output_bias"] = d_proj.sum(axis=(0, 1))
    d_attended = (d_proj @ w["output_kernel"].T).reshape(
        batch, latent_len, num_heads, p["head_dim"]
    )

    # attended = sum_n a_n v_n per head and latent, a = softmax(logits).
    d_attention = np.einsum("blhd,bnhd->bhln", d_attended, p["v"])
    d_v = np.einsum("bhln,blhd->bnhd", attention, d_attended)
    d_logits = attention * (
        d_attention - np.sum(attention * d_attention, axis=-1, keepdims=True)
    )
    d_q = np.einsum("bhln,bnhd->lhd", d_logits, p["k"]) * p["scale"]
    d_k = np.einsum("bhln,lhd->bnhd", d_logits, p["q"])
    if w["query_norm_gamma"] is not None:
        d_q, grads["query_norm_gamma"], grads["query_norm_beta"] = _layer_norm_grad(
            d_q, w["query_norm_gamma"], p["q_cache"]
        )
        d_k, grads["key_norm_gamma"], grads["key_norm_beta"] = _layer_norm_grad(
            d_k, w["key_norm_gamma"], p["k_cache"]
        )
    d_q = d_q.reshape(latent_len, channels)
    d_k = d_k.reshape(batch, positions, channels)
    d_v = d_v.reshape(batch, positions, channels)
    grads["latent"] = d_q @ w["query_kernel"].T
    grads["query_kernel"] = w["latent"].T @ d_q
    grads["key_kernel"] = np.einsum("bnc,bno->co", x, d_k)
    grads["value_kernel"] = np.einsum("bnc,bno->co", x, d_v)
    if w["query_bias"] is not None:
        grads["query_bias"] = d_q.sum(axis=0)
        grads["key_bias"] = d_k.sum(axis=(0, 1))
        grads["value_bias"] = d_v.sum(axis=(0, 1))
    dx = d_k @ w["key_kernel"].T + d_v @ w["value_kernel"].T
    dx = np.where(valid[..., None], dx, 0.0)
    return {"x": layout.feature_map(dx), **grads}
