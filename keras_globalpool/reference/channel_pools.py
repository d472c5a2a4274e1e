"""avg, max, mixed, GeM and LSE: one value per channel, forward and backward."""

import numpy as np

from keras_globalpool.reference.layout import (
    MIXED_MODES,
    _check_option,
    _count,
    _flatten,
)
from keras_globalpool.reference.normalization import _masked_softmax


def _avg(x, valid):
    return x.sum(axis=1) / _count(valid)


def _avg_grad(valid, dy):
    return valid[..., None] * dy[:, None, :] / _count(valid)[:, None, :]


def _max(x, valid):
    peak = np.where(valid[..., None], x, -np.inf).max(axis=1)
    return np.where(valid.any(axis=1)[:, None], peak, 0.0)


def _max_grad(x, valid, dy):
    winners = valid[..., None] & (x == _max(x, valid)[:, None, :])
    share = winners / np.maximum(winners.sum(axis=1, keepdims=True), 1)
    return share * dy[:, None, :]


def _clipped_gate(gate, channels):
    if gate is None:
        raise ValueError('`gate` is required when mode="learned". Received: gate=None')
    gate = np.asarray(gate, dtype=np.float64)
    if gate.shape != (channels,):
        raise ValueError(
            f"`gate` must have shape (channels,) = {(channels,)}. "
            f"Received: gate.shape={gate.shape}"
        )
    return np.clip(gate, 0.0, 1.0), (gate >= 0.0) & (gate <= 1.0)


def _gem_parts(x, valid, p, eps):
    """Returns `(z, y)`: the clamped `x` (1 at masked positions) and the GeM.

    `y = zmax * mean((z / zmax) ** p) ** (1 / p)`, where `zmax` is the
    largest valid `z`: each ratio is at most 1 and the largest is exactly 1,
    so the power neither overflows nor makes the mean underflow to zero.
    """
    z = np.where(valid[..., None], np.maximum(x, eps), 1.0)
    zmax = np.where(valid[..., None], z, 0.0).max(axis=1)
    safe_max = np.where(zmax > 0, zmax, 1.0)
    ratio = np.where(valid[..., None], z / safe_max[:, None, :], 0.0)
    y = safe_max * (np.sum(ratio**p, axis=1) / _count(valid)) ** (1.0 / p)
    return z, np.where(valid.any(axis=1)[:, None], y, 0.0)


def _lse_parts(x, valid, r):
    """Returns `(peak, terms, log_mean, y)` of LSE pooling with sharpness `r`.

    `y = peak + log_mean / r`, where `peak` is the largest valid `x`,
    `terms = exp(r * (x - peak))` (0 at masked positions) and `log_mean` is
    the log of their mean: each term is at most 1 and the largest is 1, so
    nothing overflows and the mean never underflows to zero. Where the mean
    is above 1/2 its log is `log1p(mean(expm1(...)))`, which keeps the
    differences that `exp` rounds to 1 when `r * (x - peak)` is tiny.
    """
    inside = valid[..., None]
    peak = _max(x, valid)
    shifted = np.where(inside, r * (x - peak[:, None, :]), 0.0)
    terms = np.where(inside, np.exp(shifted), 0.0)
    count = _count(valid)
    has_valid = valid.any(axis=1)[:, None]
    mean = np.where(has_valid, terms.sum(axis=1), 1.0) / count
    small_mean = np.where(inside, np.expm1(shifted), 0.0).sum(axis=1) / count
    log_mean = np.where(
        small_mean > -0.5,
        np.log1p(np.maximum(small_mean, -0.5)),
        np.log(mean),
    )
    y = np.where(has_valid, peak + log_mean / r, 0.0)
    return peak, terms, log_mean, y


def avg_pool(x, data_format="channels_last", keepdims=False, mask=None):
    """Mean over the valid positions.

    Args:
        x: array of rank 3, 4 or 5.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        The pooled float64 array.

    Example:

    >>> from keras_globalpool.reference import avg_pool
    >>> avg_pool(np.array([[[1.0], [2.0], [6.0]]]))
    array([[3.]])
    """
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    return layout.pooled(_avg(x, valid))


def max_pool(x, data_format="channels_last", keepdims=False, mask=None):
    """Maximum over the valid positions.

    Args:
        x: array of rank 3, 4 or 5.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        The pooled float64 array.

    Example:

    >>> from keras_globalpool.reference import max_pool
    >>> max_pool(np.array([[[1.0], [2.0], [6.0]]]), mask=[[True, True, False]])
    array([[2.]])
    """
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    return layout.pooled(_max(x, valid))


def mixed_pool(
    x, mode="concat", gate=None, data_format="channels_last", keepdims=False, mask=None
):
    """Average and max pooling combined.

    Args:
        x: array of rank 3, 4 or 5.
        mode: `"concat"` (`[avg, max]` along the channel axis, 2C channels),
            `"mean"` (`0.5 * (avg + max)`) or `"learned"`
            (`g * avg + (1 - g) * max` with `g = clip(gate, 0, 1)`).
        gate: array of shape `(channels,)`; required for `"learned"`.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        The pooled float64 array.

    Example:

    >>> from keras_globalpool.reference import mixed_pool
    >>> mixed_pool(np.array([[[1.0], [2.0], [6.0]]]))
    array([[3., 6.]])
    """
    _check_option("mode", mode, MIXED_MODES)
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    avg, peak = _avg(x, valid), _max(x, valid)
    if mode == "concat":
        return layout.pooled(np.concatenate([avg, peak], axis=-1))
    if mode == "mean":
        return layout.pooled(0.5 * (avg + peak))
    g, _ = _clipped_gate(gate, x.shape[-1])
    return layout.pooled(g * avg + (1.0 - g) * peak)


def gem_pool(
    x, p=3.0, eps=1e-6, data_format="channels_last", keepdims=False, mask=None
):
    """Generalized mean `mean(max(x, eps) ** p) ** (1 / p)` over valid positions.

    Scaled by the largest term, so no `p` overflows.

    Args:
        x: array of rank 3, 4 or 5.
        p: float > 0. The exponent.
        eps: float > 0. The clamp floor.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        The pooled float64 array.

    Example:

    >>> from keras_globalpool.reference import gem_pool
    >>> gem_pool(np.array([[[1.0], [7.0]]]), p=2.0)
    array([[5.]])
    """
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    return layout.pooled(_gem_parts(x, valid, float(p), float(eps))[1])


def lse_pool(x, r=10.0, data_format="channels_last", keepdims=False, mask=None):
    """Log-sum-exp pooling `log(mean(exp(r * x))) / r` over valid positions.

    Shifted by the largest valid value, so no `r` overflows.

    Args:
        x: array of rank 3, 4 or 5.
        r: float > 0. The sharpness: near 0 average pooling, large max.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        The pooled float64 array.

    Example:

    >>> from keras_globalpool.reference import lse_pool
    >>> lse_pool(np.array([[[0.0], [np.log(3.0)]]]), r=1.0)  # log((1 + 3) / 2)
    array([[0.69314718]])
    """
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    return layout.pooled(_lse_parts(x, valid, float(r))[-1])


def avg_pool_grad(x, dy, data_format="channels_last", keepdims=False, mask=None):
    """Gradient of `avg_pool`.

    Args:
        x: the input of `avg_pool`.
        dy: gradient of the loss with respect to the pooled output.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x": dx}`.

    Example:

    >>> from keras_globalpool.reference import avg_pool_grad
    >>> avg_pool_grad(np.zeros((1, 4, 1)), np.ones((1, 1)))["x"][0, :, 0]
    array([0.25, 0.25, 0.25, 0.25])
    """
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    dy = layout.flat_pooled(dy, x.shape[-1])
    return {"x": layout.feature_map(_avg_grad(valid, dy))}


def max_pool_grad(x, dy, data_format="channels_last", keepdims=False, mask=None):
    """Gradient of `max_pool`; tied maxima share the gradient equally.

    Args:
        x: the input of `max_pool`.
        dy: gradient of the loss with respect to the pooled output.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x": dx}`.

    Example:

    >>> from keras_globalpool.reference import max_pool_grad
    >>> x = np.array([[[1.0], [3.0], [3.0], [2.0]]])
    >>> max_pool_grad(x, np.ones((1, 1)))["x"][0, :, 0]
    array([0. , 0.5, 0.5, 0. ])
    """
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    dy = layout.flat_pooled(dy, x.shape[-1])
    return {"x": layout.feature_map(_max_grad(x, valid, dy))}


def mixed_pool_grad(
    x,
    dy,
    mode="concat",
    gate=None,
    data_format="channels_last",
    keepdims=False,
    mask=None,
):
    """Gradient of `mixed_pool`.

    Args:
        x: the input of `mixed_pool`.
        dy: gradient of the loss with respect to the pooled output.
        mode: `"concat"`, `"mean"` or `"learned"`.
        gate: array of shape `(channels,)`; required for `"learned"`.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x": dx}`, plus `"gate"` (zero where `gate` is outside [0, 1]) when
        `mode="learned"`.

    Example:

    >>> from keras_globalpool.reference import mixed_pool_grad
    >>> x = np.array([[[1.0], [2.0], [6.0]]])
    >>> mixed_pool_grad(x, np.ones((1, 1)), "learned", gate=[0.5])["gate"]
    array([-3.])
    """
    _check_option("mode", mode, MIXED_MODES)
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    channels = x.shape[-1]
    dy = layout.flat_pooled(dy, 2 * channels if mode == "concat" else channels)
    if mode == "concat":
        d_avg, d_max = dy[:, :channels], dy[:, channels:]
    elif mode == "mean":
        d_avg = d_max = 0.5 * dy
    else:
        g, inside = _clipped_gate(gate, channels)
        d_avg, d_max = g * dy, (1.0 - g) * dy
    dx = _avg_grad(valid, d_avg) + _max_grad(x, valid, d_max)
    grads = {"x": layout.feature_map(dx)}
    if mode == "learned":
        d_gate = np.sum(dy * (_avg(x, valid) - _max(x, valid)), axis=0)
        grads["gate"] = np.where(inside, d_gate, 0.0)
    return grads


def gem_pool_grad(
    x, dy, p=3.0, eps=1e-6, data_format="channels_last", keepdims=False, mask=None
):
    """Gradient of `gem_pool`.

    With `z = max(x, eps)`, `n` valid positions and GeM `y`:
    `dy/dz_i = (z_i / y) ** (p - 1) / n` (0 where `x < eps`), and
    `dy/dp = y / p * (sum_i w_i * log(z_i) - log(y))` with
    `w_i = z_i ** p / sum_j z_j ** p`.

    Args:
        x: the input of `gem_pool`.
        dy: gradient of the loss with respect to the pooled output.
        p: float > 0. The exponent.
        eps: float > 0. The clamp floor.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x": dx, "p": dp}`, with `dp` a float64 scalar.

    Example:

    >>> from keras_globalpool.reference import gem_pool_grad
    >>> float(gem_pool_grad(np.array([[[2.0], [2.0]]]), np.ones((1, 1)))["p"])
    0.0
    """
    p, eps = float(p), float(eps)
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    dy = layout.flat_pooled(dy, x.shape[-1])
    z, y = _gem_parts(x, valid, p, eps)
    has_valid = valid.any(axis=1)[:, None]
    safe_y = np.where(has_valid, y, 1.0)
    # z / y <= n ** (1 / p), so these powers stay finite for any p.
    base = np.where(valid[..., None], z / safe_y[:, None, :], 1.0)
    dz = base ** (p - 1.0) / _count(valid)[:, None, :]
    dx = np.where(valid[..., None] & (x >= eps), dz * dy[:, None, :], 0.0)
    w = _masked_softmax(np.moveaxis(p * np.log(z), 1, -1), valid[:, None, :])
    mean_log = np.sum(w * np.moveaxis(np.log(z), 1, -1), axis=-1)
    dy_dp = np.where(has_valid, safe_y / p * (mean_log - np.log(safe_y)), 0.0)
    return {"x": layout.feature_map(dx), "p": np.float64(np.sum(dy * dy_dp))}


def lse_pool_grad(
    x, dy, r=10.0, data_format="channels_last", keepdims=False, mask=None
):
    """Gradient of `lse_pool`.

    With `w = softmax(r * x)` over the valid positions and LSE `y`:
    `dy/dx_i = w_i`, and `dy/dr = (sum_i w_i * x_i - y) / r`, computed as
    `(sum_i w_i * (x_i - peak) - (y - peak)) / r` so that `x`'s common part
    cancels exactly.

    Args:
        x: the input of `lse_pool`.
        dy: gradient of the loss with respect to the pooled output.
        r: float > 0. The sharpness.
        data_format: `"channels_last"` or `"channels_first"`.
        keepdims: bool. Keep the spatial axes with size 1.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x": dx, "r": dr}`, with `dr` a float64 scalar.

    Example:

    >>> from keras_globalpool.reference import lse_pool_grad
    >>> x = np.array([[[0.0], [np.log(3.0)]]])
    >>> lse_pool_grad(x, np.ones((1, 1)), r=1.0)["x"][0, :, 0]
    array([0.25, 0.75])
    """
    r = float(r)
    x, valid, layout = _flatten(x, data_format, keepdims, mask)
    dy = layout.flat_pooled(dy, x.shape[-1])
    peak, terms, log_mean, _ = _lse_parts(x, valid, r)
    has_valid = valid.any(axis=1)[:, None]
    w = terms / np.where(has_valid, terms.sum(axis=1), 1.0)[:, None, :]
    centred = np.where(valid[..., None], x - peak[:, None, :], 0.0)
    dy_dr = np.where(has_valid, (np.sum(w * centred, axis=1) - log_mean / r) / r, 0.0)
    dx = w * dy[:, None, :]
    return {"x": layout.feature_map(dx), "r": np.float64(np.sum(dy * dy_dr))}
