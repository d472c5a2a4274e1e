"""SimPool: its attention pooling and its power mean."""

from keras import ops

from keras_globalpool.pool_ops.attention import (
    global_weighted_pool,
    normalize_scores,
    softmax_cancelled,
)
from keras_globalpool.pool_ops.channel_pools import global_avg_pool
from keras_globalpool.pool_ops.normalization import layer_norm
from keras_globalpool.pool_ops.reductions import _empty_pool, _no_elements, blocked_sum


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
    features,
    weights,
    num_heads=1,
    mask=None,
    gamma=None,
    epsilon=1e-5,
    fold_keys=True,
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

    Without a key norm, the keys are never formed: the query is folded into
    the key kernel instead, `q . (h W_k + b_k) = h . (W_k q) + b_k . q`,
    which costs `channels**2` per sample rather than per position (with
    the keys, a ResNet50 head took 5.3% of the backbone's time on an AVX2
    CPU, folded 1.1%). `fold_keys=False` forms them, as the key norm needs;
    tests check that both agree.

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
        fold_keys: bool. Fold the query into the key kernel when there is
            no key norm. Defaults to `True`.

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
    if fold_keys and weights.get("key_norm_gamma") is None:
        logits = _folded_logits(values, query, weights, positions)
    else:
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


def _folded_logits(values, query, weights, positions):
    """`query . keys` per position and head, without forming the keys.

    The key bias adds `b_k . q` to every position of a head alike, which
    the softmax cancels: it is added as `softmax_cancelled` zeros, so that
    the bias gets its gradient (0 but for roundoff, as with the keys
    formed).

    Args:
        values: `(batch, *positions, channels)`, the layer-normalized map.
        query: `(batch, num_heads, head_dim)`, scaled.
        weights: `global_sim_pool`'s weights, `key_kernel` among them.
        positions: string. One einsum letter per spatial axis.

    Returns:
        The logits, `(batch, *positions, num_heads)`.
    """
    channels = values.shape[-1]
    num_heads, head_dim = query.shape[1], query.shape[2]
    kernel = ops.reshape(weights["key_kernel"], (channels, num_heads, head_dim))
    folded = ops.einsum("chd,bhd->bch", kernel, query)
    logits = ops.einsum(f"b{positions}c,bch->b{positions}h", values, folded)
    if weights.get("key_bias") is None:
        return logits
    bias = ops.reshape(weights["key_bias"], (num_heads, head_dim))
    offset = softmax_cancelled(ops.einsum("hd,bhd->bh", bias, query))
    return logits + ops.reshape(offset, (-1, *[1] * len(positions), num_heads))
