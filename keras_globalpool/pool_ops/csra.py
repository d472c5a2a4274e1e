"""Class-specific residual attention (CSRA): class logits from a feature map."""

import math

from keras import ops

from keras_globalpool.pool_ops.attention import global_weighted_pool, normalize_scores
from keras_globalpool.pool_ops.channel_pools import global_avg_pool, global_max_pool

# The softmax temperature of each head, by number of heads, as Zhu & Wu set
# them; `inf` is their "T = 99": the attention logit is the max.
CSRA_TEMPERATURES = {
    1: (1.0,),
    2: (1.0, math.inf),
    4: (1.0, 2.0, 4.0, math.inf),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf),
}

# A class kernel's squared norm is at least this, so an all-zero kernel
# scores 0 rather than 0 / 0; no kernel a layer initializes or trains is
# that small.
CSRA_MIN_SQUARED_NORM = 1e-24


def csra_scores(features, kernel):
    """Each class's score at each position, `x . w_c / ||w_c||`, per head.

    Args:
        features: tensor of shape `(batch, *positions, channels)`; masked
            positions must already hold zeros.
        kernel: tensor of shape `(heads, channels, classes)`.

    Returns:
        The scores, of shape `(batch, *positions, heads, classes)`.
    """
    squared = ops.sum(kernel * kernel, axis=1)
    # `where`, not `maximum`: Keras's torch `maximum` computes float64 in float32.
    floor = CSRA_MIN_SQUARED_NORM
    norms = ops.sqrt(ops.where(squared > floor, squared, floor))
    # `einsum` with explicit subscripts: see `GlobalAttentionPooling`.
    positions = "bxyz"[: len(features.shape) - 1]
    unit_kernel = kernel / ops.expand_dims(norms, 1)
    return ops.einsum(f"{positions}c,hck->{positions}hk", features, unit_kernel)


def csra_logits(features, kernel, temperatures, lam, mask=None):
    """CSRA's class logits: `sum_h (mean(s_h) + lam * att_h(s_h))`.

    For a head of temperature `T`, `att_h` is the sum over positions of
    `s_h * softmax(T * s_h)`; for `T = inf`, the max of `s_h`. Only valid
    positions take part, and a sample with none gets zeros. The softmax
    and the mean are `blocked_sum`s.

    Args:
        features: tensor of shape `(batch, *positions, channels)`; masked
            positions must already hold zeros.
        kernel: tensor of shape `(heads, channels, classes)`.
        temperatures: tuple of one float per head, `inf` for max.
        lam: float. The weight of the attention logits.
        mask: optional boolean tensor of shape `(batch, *positions, 1)`.

    Returns:
        The logits, of shape `(batch, classes)`.

    Example:

    >>> from keras_globalpool.pool_ops import csra_logits
    >>> x = np.array([[[1.0], [3.0]]], "float32")
    >>> kernel = np.full((2, 1, 1), 2.0, "float32")
    >>> y = csra_logits(x, kernel, (1.0, float("inf")), lam=0.5)
    >>> round(float(keras.ops.convert_to_numpy(y)[0, 0]), 4)
    6.8808
    """
    scores = csra_scores(features, kernel)
    axes = tuple(range(1, len(scores.shape) - 2))
    if mask is not None:
        mask = ops.expand_dims(mask, -1)
    attention = []
    for head, temperature in enumerate(temperatures):
        head_scores = scores[..., head : head + 1, :]
        if math.isinf(temperature):
            attention.append(global_max_pool(head_scores, axes, mask))
            continue
        weights = normalize_scores(temperature * head_scores, axes, mask, "softmax")
        attention.append(global_weighted_pool(head_scores, weights, axes))
    base = global_avg_pool(scores, axes, mask)
    logits = base + lam * ops.concatenate(attention, axis=1)
    return ops.sum(logits, axis=1)
