"""SimPool, forward and backward."""

from typing import NamedTuple

import numpy as np

from keras_globalpool.reference.channel_pools import _avg, _avg_grad
from keras_globalpool.reference.layout import _flatten
from keras_globalpool.reference.normalization import (
    _layer_norm,
    _layer_norm_grad,
    _masked_softmax,
)

# The weights of `sim_pool`, in the order of its arguments; the biases and
# the query and key norms are optional.
SIM_POOL_WEIGHTS = (
    "norm_gamma",
    "norm_beta",
    "query_kernel",
    "key_kernel",
    "query_bias",
    "key_bias",
    "query_norm_gamma",
    "query_norm_beta",
    "key_norm_gamma",
    "key_norm_beta",
)


# SimPool's shift of the values before the power, timm's.
SIM_POOL_SHIFT = 1e-6


class _SimPool(NamedTuple):
    """The intermediates of `sim_pool`, flat: `n` positions, `h` heads of
    `d` channels."""

    mean: np.ndarray  # the query before its projection, (batch, C)
    values: np.ndarray  # the normalized features, (batch, n, C)
    norm: tuple  # the layer norm's cache
    query: np.ndarray  # per head, after its norm and scale, (batch, h, d)
    query_norm: tuple  # None without qk_norm
    keys: np.ndarray  # per head, after their norm, (batch, n, h, d)
    key_norm: tuple
    attention: np.ndarray  # (batch, h, n)
    low: np.ndarray  # with gamma: the values' minimum, (batch, C); else None
    shifted: np.ndarray  # with gamma: the values minus it plus the shift
    total: np.ndarray  # with gamma: the weighted sum of the powers
    pooled: np.ndarray  # (batch, C)


def _sim_pool_parts(x, valid, w, num_heads, gamma, epsilon):
    batch, n, channels = x.shape
    head_dim = channels // num_heads
    has_valid = valid.any(axis=1)[:, None]
    mean = _avg(x, valid)
    values, norm = _layer_norm(x, w["norm_gamma"], w["norm_beta"], epsilon)
    query = mean @ w["query_kernel"]
    keys = values @ w["key_kernel"]
    if w["query_bias"] is not None:
        query, keys = query + w["query_bias"], keys + w["key_bias"]
    query = query.reshape(batch, num_heads, head_dim)
    keys = keys.reshape(batch, n, num_heads, head_dim)
    query_norm = key_norm = None
    if w["query_norm_gamma"] is not None:
        query, query_norm = _layer_norm(
            query, w["query_norm_gamma"], w["query_norm_beta"], epsilon
        )
        keys, key_norm = _layer_norm(
            keys, w["key_norm_gamma"], w["key_norm_beta"], epsilon
        )
    query = query * head_dim**-0.5
    logits = np.einsum("bhd,bnhd->bhn", query, keys)
    attention = _masked_softmax(logits, valid[:, None, :])
    per_channel = np.repeat(attention, head_dim, axis=1)  # (batch, C, n)
    low = shifted = total = None
    if gamma is None:
        pooled = np.einsum("bcn,bnc->bc", per_channel, values)
    else:
        inside = valid[..., None]
        low = np.where(inside, values, np.inf).min(axis=1)
        low = np.where(has_valid, low, 0.0)
        shifted = np.where(inside, values - low[:, None] + SIM_POOL_SHIFT, 1.0)
        total = np.einsum("bcn,bnc->bc", per_channel, shifted**gamma)
        pooled = np.where(has_valid, np.where(has_valid, total, 1.0) ** (1 / gamma), 0)
    return _SimPool(
        mean,
        values,
        norm,
        query,
        query_norm,
        keys,
        key_norm,
        attention,
        low,
        shifted,
        total,
        pooled,
    )


def _sim_pool_weights(given, channels, num_heads):
    """`given`'s weights as float64 arrays by name (None where absent), checked."""
    if not isinstance(num_heads, int) or num_heads < 1 or channels % num_heads:
        raise ValueError(
            "`num_heads` must be an integer >= 1 that divides the channels. "
            f"Received: num_heads={num_heads!r}, channels={channels}"
        )
    w = {
        name: None if given[name] is None else np.asarray(given[name], np.float64)
        for name in SIM_POOL_WEIGHTS
    }
    for first, second in [
        ("query_bias", "key_bias"),
        ("query_norm_gamma", "query_norm_beta"),
        ("query_norm_gamma", "key_norm_gamma"),
        ("key_norm_gamma", "key_norm_beta"),
    ]:
        if (w[first] is None) != (w[second] is None):
            raise ValueError(
                f"`{first}` and `{second}` are given together or not at all. "
                f"Received: {first}={given[first]!r}, {second}={given[second]!r}"
            )
    return w


def sim_pool(
    x,
    norm_gamma,
    norm_beta,
    query_kernel,
    key_kernel,
    query_bias=None,
    key_bias=None,
    query_norm_gamma=None,
    query_norm_beta=None,
    key_norm_gamma=None,
    key_norm_beta=None,
    num_heads=1,
    gamma=None,
    epsilon=1e-5,
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """SimPool (Psomas et al., ICCV 2023), as timm's `SimPool2d`.

    With channels last and `LN` the layer norm over the channels (biased
    variance, `epsilon`): `v = LN(x) * norm_gamma + norm_beta`, the query
    `q = mean(x) @ query_kernel + query_bias` (the mean over the valid
    positions) and the keys `k = v @ key_kernel + key_bias`, each split
    into `num_heads` heads of `d = C / num_heads` channels (channel `c` in
    head `c // d`) and, with the norm weights, layer-normalized per head.
    Head `h` weights the positions by `a = softmax(q_h . k_h / sqrt(d))`
    over the valid ones, and pools its channels of `v`:
    `pooled[c] = sum_n a[n] * v[n, c]`, or with `gamma`,
    `(sum_n a[n] * (v[n, c] - min_n v[n, c] + 1e-6) ** gamma) ** (1 / gamma)`,
    the minimum over the valid positions.

    Args:
        x: array of rank 3, 4 or 5 with C channels.
        norm_gamma: array of shape `(C,)`.
        norm_beta: array of shape `(C,)`.
        query_kernel: array of shape `(C, C)`, input channels first.
        key_kernel: array of shape `(C, C)`.
        query_bias: optional array of shape `(C,)`, with `key_bias`.
        key_bias: optional array of shape `(C,)`.
        query_norm_gamma: optional array of shape `(d,)`; the four norm
            weights are given together.
        query_norm_beta: optional array of shape `(d,)`.
        key_norm_gamma: optional array of shape `(d,)`.
        key_norm_beta: optional array of shape `(d,)`.
        num_heads: int dividing C.
        gamma: optional float > 0. The power.
        epsilon: float > 0. The layer norms' epsilon.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `(pooled, weights)`: the pooled float64 array, and the weights of
        shape `(batch, num_heads, *spatial)`.

    Example:

    >>> from keras_globalpool.reference import sim_pool
    >>> x = np.array([[[0.0, 2.0], [0.0, -2.0]]])  # LN gives [-1, 1], [1, -1]
    >>> eye = np.eye(2)
    >>> pooled, w = sim_pool(x, [1, 1], [0, 0], eye, eye, epsilon=0.0)
    >>> w  # the mean is [0, 0]: equal logits
    array([[[0.5, 0.5]]])
    >>> pooled
    array([[0., 0.]])
    """
    given = {
        name: value for name, value in locals().items() if name in SIM_POOL_WEIGHTS
    }
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    w = _sim_pool_weights(given, x.shape[-1], num_heads)
    parts = _sim_pool_parts(x, valid, w, num_heads, gamma, epsilon)
    heads = parts.attention.reshape((x.shape[0], num_heads) + layout.spatial)
    return layout.pooled(parts.pooled), heads


def sim_pool_grad(
    x,
    dy,
    norm_gamma,
    norm_beta,
    query_kernel,
    key_kernel,
    query_bias=None,
    key_bias=None,
    query_norm_gamma=None,
    query_norm_beta=None,
    key_norm_gamma=None,
    key_norm_beta=None,
    num_heads=1,
    gamma=None,
    epsilon=1e-5,
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """Gradient of `sim_pool`'s pooled output.

    With `gamma`, the minimum's gradient is shared equally by the valid
    positions tied for it, as TensorFlow's is.

    Args:
        x: the input of `sim_pool`.
        dy: gradient of the loss with respect to the pooled output.
        norm_gamma, norm_beta, query_kernel, key_kernel, query_bias,
            key_bias, query_norm_gamma, query_norm_beta, key_norm_gamma,
            key_norm_beta, num_heads, gamma, epsilon: as in `sim_pool`.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x", "norm_gamma", "norm_beta", "query_kernel", "key_kernel"}`,
        plus the gradient of each optional weight given, each shaped like
        its argument.

    Example:

    >>> from keras_globalpool.reference import sim_pool_grad
    >>> x, dy = np.random.default_rng(0).normal(size=(2, 5, 4)), np.ones((2, 4))
    >>> grads = sim_pool_grad(x, dy, np.ones(4), np.zeros(4), np.eye(4), np.eye(4))
    >>> sorted(grads), grads["x"].shape
    (['key_kernel', 'norm_beta', 'norm_gamma', 'query_kernel', 'x'], (2, 5, 4))
    """
    given = {
        name: value for name, value in locals().items() if name in SIM_POOL_WEIGHTS
    }
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    batch, n, channels = x.shape
    head_dim = channels // num_heads
    w = _sim_pool_weights(given, channels, num_heads)
    dy = layout.flat_pooled(dy, channels)
    p = _sim_pool_parts(x, valid, w, num_heads, gamma, epsilon)
    inside = valid[..., None]
    has_valid = valid.any(axis=1)[:, None]
    per_channel = np.repeat(p.attention, head_dim, axis=1)  # (batch, C, n)

    # The pooling of the values: d_attention per head, d_values per position.
    if gamma is None:
        pooled_values = p.values
        d_values = np.einsum("bcn,bc->bnc", per_channel, dy)
        d_total = dy
    else:
        pooled_values = p.shifted**gamma
        # d total ** (1 / gamma) = pooled / (gamma * total); 0 where empty.
        safe_total = np.where(has_valid, p.total, 1.0)
        d_total = np.where(has_valid, dy * p.pooled / (gamma * safe_total), 0.0)
        d_shifted = np.einsum("bcn,bc->bnc", per_channel, d_total)
        d_shifted = np.where(inside, d_shifted * gamma * p.shifted ** (gamma - 1), 0)
        # The minimum's gradient goes to the valid positions tied for it.
        winners = inside & (p.values == p.low[:, None, :])
        share = winners / np.maximum(winners.sum(axis=1, keepdims=True), 1)
        d_values = d_shifted - share * d_shifted.sum(axis=1, keepdims=True)
    d_attention = np.einsum("bnc,bc->bcn", pooled_values, d_total)
    d_attention = d_attention.reshape(batch, num_heads, head_dim, n).sum(axis=2)

    # The softmax, then the logits `q . k`.
    d_logits = p.attention * (
        d_attention - np.sum(p.attention * d_attention, axis=-1, keepdims=True)
    )
    d_query = np.einsum("bhn,bnhd->bhd", d_logits, p.keys) * head_dim**-0.5
    d_keys = np.einsum("bhn,bhd->bnhd", d_logits, p.query)
    grads = {}
    if p.query_norm is not None:
        d_query, grads["query_norm_gamma"], grads["query_norm_beta"] = _layer_norm_grad(
            d_query, w["query_norm_gamma"], p.query_norm
        )
        d_keys, grads["key_norm_gamma"], grads["key_norm_beta"] = _layer_norm_grad(
            d_keys, w["key_norm_gamma"], p.key_norm
        )
    d_query = d_query.reshape(batch, channels)
    d_keys = d_keys.reshape(batch, n, channels)
    if w["query_bias"] is not None:
        grads["query_bias"] = d_query.sum(axis=0)
        grads["key_bias"] = d_keys.sum(axis=(0, 1))
    grads["query_kernel"] = p.mean.T @ d_query
    grads["key_kernel"] = np.einsum("bnc,bno->co", p.values, d_keys)

    # The values feed the keys and the output; the mean feeds the query.
    d_values = d_values + d_keys @ w["key_kernel"].T
    d_x, grads["norm_gamma"], grads["norm_beta"] = _layer_norm_grad(
        d_values, w["norm_gamma"], p.norm
    )
    d_mean = d_query @ w["query_kernel"].T
    d_x = d_x + _avg_grad(valid, d_mean)
    d_x = np.where(inside, d_x, 0.0)
    return {"x": layout.feature_map(d_x), **grads}
