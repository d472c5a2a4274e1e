"""CSRA, class-specific residual attention, forward and backward."""

import math
from typing import NamedTuple

import numpy as np

from keras_globalpool.reference.layout import _count, _flatten
from keras_globalpool.reference.normalization import _masked_softmax

# The temperatures of each head for each number of heads, the paper's (Zhu
# and Wu, 2021): `inf` is a max over the positions.
CSRA_TEMPERATURES = {
    1: (1.0,),
    2: (1.0, math.inf),
    4: (1.0, 2.0, 4.0, math.inf),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf),
}


# The floor of a kernel column's squared norm: below it, the norm is the
# constant 1e-12.
_SQUARED_NORM_FLOOR = 1e-24


class _CSRA(NamedTuple):
    """The intermediates of `csra`, flat: `n` positions, `h` heads, `k`
    classes."""

    kernel: np.ndarray  # (h, C, k)
    temperatures: tuple  # of floats, one per head
    squared: np.ndarray  # the squared norm of each column, (h, k)
    norms: np.ndarray  # its clamped root, (h, k)
    unit: np.ndarray  # the kernel over its norms, (h, C, k)
    scores: np.ndarray  # (batch, h, k, n), 0 where masked
    count: np.ndarray  # valid positions, at least 1, as (batch, 1, 1, 1)
    base: np.ndarray  # the mean score, (batch, h, k)
    weights: list  # per head, the softmax (batch, k, n), or None for a max
    attention: np.ndarray  # (batch, h, k)


def _check_csra_arguments(channels, kernel, temperatures):
    """Returns `(kernel, temperatures)` as float64 array and tuple."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 3 or kernel.shape[1] != channels:
        raise ValueError(
            "`kernel` must have shape (heads, channels, classes) with "
            f"channels={channels}. Received: kernel.shape={kernel.shape}"
        )
    temperatures = tuple(float(t) for t in temperatures)
    if len(temperatures) != kernel.shape[0]:
        raise ValueError(
            "`temperatures` must have one value per head of `kernel` "
            f"(heads={kernel.shape[0]}). Received: temperatures={temperatures}"
        )
    if any(math.isnan(t) or t == -math.inf for t in temperatures):
        raise ValueError(
            "`temperatures` must be finite numbers or `inf` (a max). "
            f"Received: temperatures={temperatures}"
        )
    return kernel, temperatures


def _max(scores, valid):
    peak = np.where(valid, scores, -np.inf).max(axis=-1, initial=-np.inf)
    return np.where(valid.any(axis=-1), peak, 0.0)


def _csra_parts(x, valid, kernel, temperatures):
    kernel, temperatures = _check_csra_arguments(x.shape[-1], kernel, temperatures)
    squared = np.sum(kernel**2, axis=1)
    norms = np.sqrt(np.maximum(squared, _SQUARED_NORM_FLOOR))
    unit = kernel / norms[:, None, :]
    scores = np.einsum("bnc,hck->bhkn", x, unit)
    scores = np.where(valid[:, None, None, :], scores, 0.0)
    count = _count(valid)[:, :, None, None]
    base = scores.sum(axis=-1) / count[..., 0]
    per_class = valid[:, None, :]  # against each head's (batch, k, n)
    weights, attention = [], []
    for h, temperature in enumerate(temperatures):
        if temperature == math.inf:
            weights.append(None)
            attention.append(_max(scores[:, h], per_class))
        else:
            w = np.zeros_like(scores[:, h])  # a map of 0 positions stays 0
            if w.size:
                w = _masked_softmax(temperature * scores[:, h], per_class)
            weights.append(w)
            attention.append(np.sum(w * scores[:, h], axis=-1))
    attention = np.stack(attention, axis=1)
    return _CSRA(
        kernel,
        temperatures,
        squared,
        norms,
        unit,
        scores,
        count,
        base,
        weights,
        attention,
    )


def csra(x, kernel, temperatures, lam, data_format="channels_last", mask=None):
    """CSRA, class-specific residual attention (Zhu and Wu, 2021).

    With channels last, each head `h` scores each position `n` for each
    class `k` with the kernel's column normalized to unit length,
    `s[h, k, n] = x[n] @ kernel[h, :, k] / ||kernel[h, :, k]||` (the norm
    at least `1e-12`). It adds the mean score over the valid positions and
    `lam` times the class-specific attention: with temperature `T`,
    `sum_n softmax_n(T * s)[n] * s[n]`, or the max of `s` for `T = inf`.
    The logits are the sum over the heads. A sample with no valid position
    gives zeros.

    Args:
        x: array of rank 3, 4 or 5 with C channels.
        kernel: array of shape `(heads, C, classes)`.
        temperatures: one float per head; `math.inf` is a max. The paper's
            are in `CSRA_TEMPERATURES`, by number of heads.
        lam: float. The weight of the attention next to the mean.
        data_format: `"channels_last"` or `"channels_first"`.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        The float64 logits, of shape `(batch, classes)`.

    Example:

    >>> from keras_globalpool.reference.csra import csra
    >>> x = np.array([[[1.0, 0.0], [3.0, 0.0]]])
    >>> kernel = np.array([[[2.0], [0.0]]])  # one head, one class: scores 1, 3
    >>> csra(x, kernel, (np.inf,), lam=0.5)  # mean 2 + 0.5 * max 3
    array([[3.5]])
    """
    x, valid, layout = _flatten(x, data_format, False, mask)
    parts = _csra_parts(x, valid, kernel, temperatures)
    return layout.pooled(np.sum(parts.base + lam * parts.attention, axis=1))


def csra_grad(x, dy, kernel, temperatures, lam, data_format="channels_last", mask=None):
    """Gradient of `csra`.

    The softmax-weighted sum `a = sum_n w[n] * s[n]` passes
    `w[n] * (1 + T * (s[n] - a))` to each score, and the max passes the
    gradient to the maximum, shared equally between ties. A kernel column
    whose squared norm is below `1e-24` has a constant norm, which passes
    no gradient.

    Args:
        x: the input of `csra`.
        dy: gradient of the loss with respect to the logits.
        kernel: array of shape `(heads, C, classes)`.
        temperatures: one float per head; `math.inf` is a max.
        lam: float. The weight of the attention next to the mean.
        data_format: `"channels_last"` or `"channels_first"`.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x", "kernel"}`, each gradient shaped like its argument.

    Example:

    >>> from keras_globalpool.reference.csra import csra_grad
    >>> x = np.array([[[1.0, 0.0], [3.0, 0.0]]])
    >>> kernel = np.array([[[2.0], [0.0]]])
    >>> grads = csra_grad(x, np.ones((1, 1)), kernel, (np.inf,), lam=0.5)
    >>> grads["x"]  # the mean's 1/2 everywhere, the max's 1/2 at the max
    array([[[0.5, 0. ],
            [1. , 0. ]]])
    >>> grads["kernel"]  # the kernel's scale does not change the scores
    array([[[0.],
            [0.]]])
    """
    x, valid, layout = _flatten(x, data_format, False, mask)
    parts = _csra_parts(x, valid, kernel, temperatures)
    dy = layout.flat_pooled(dy, parts.kernel.shape[-1])
    inside = valid[:, None, None, :]
    # logits = sum_h base + lam * attention; base is the mean of the scores.
    d_scores = np.broadcast_to(
        np.where(inside, dy[:, None, :, None] / parts.count, 0.0),
        parts.scores.shape,
    ).copy()
    d_attention = lam * dy[:, :, None]
    for h, w in enumerate(parts.weights):
        if w is None:
            winners = inside[:, 0] & (
                parts.scores[:, h] == parts.attention[:, h, :, None]
            )
            share = winners / np.maximum(winners.sum(axis=-1, keepdims=True), 1)
            d_scores[:, h] += share * d_attention
        else:
            spread = parts.scores[:, h] - parts.attention[:, h, :, None]
            temperature = parts.temperatures[h]
            d_scores[:, h] += w * (1.0 + temperature * spread) * d_attention
    dx = np.einsum("bhkn,hck->bnc", d_scores, parts.unit)
    dx = np.where(valid[..., None], dx, 0.0)
    # scores = x @ (kernel / r), r = ||kernel|| where its square is above the
    # floor: dr / dkernel = kernel / r there, 0 below it.
    d_unit = np.einsum("bhkn,bnc->hck", d_scores, x)
    d_norms = -np.sum(d_unit * parts.kernel, axis=1) / parts.norms**2
    d_norms = np.where(parts.squared >= _SQUARED_NORM_FLOOR, d_norms, 0.0)
    d_kernel = d_unit / parts.norms[:, None, :] + d_norms[:, None, :] * parts.unit
    return {"x": layout.feature_map(dx), "kernel": d_kernel}
