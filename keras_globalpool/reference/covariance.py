"""iSQRT-COV second-order pooling, forward and backward."""

from typing import NamedTuple

import numpy as np

from keras_globalpool.reference.layout import _count, _flatten, _t


class _Covariance(NamedTuple):
    """The intermediates of `covariance_pool`, per sample."""

    pre: np.ndarray  # the projection before its ReLU, or None
    centered: np.ndarray  # the features minus their mean (0 where masked)
    count: np.ndarray  # valid positions, at least 1, as (batch, 1, 1)
    covariance: np.ndarray
    trace: np.ndarray  # 1 where the trace is 0, as (batch, 1, 1)
    iterates: list  # (Y, Z, T) of each Newton-Schulz step, Y and Z before it
    root: np.ndarray


def _covariance_parts(x, valid, kernel, bias, iterations):
    pre = None
    features = x
    if kernel is not None:
        pre = x @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
        features = np.maximum(pre, 0.0)
    inside = valid[..., None]
    count = _count(valid)[:, :, None]
    mean = np.where(inside, features, 0.0).sum(axis=1, keepdims=True) / count
    centered = np.where(inside, features - mean, 0.0)
    covariance = np.einsum("bnc,bnd->bcd", centered, centered) / count
    trace = np.trace(covariance, axis1=1, axis2=2)[:, None, None]
    trace = np.where(trace > 0, trace, 1.0)  # a zero matrix: its root is 0
    eye = np.eye(covariance.shape[-1])
    y, z, iterates = covariance / trace, np.broadcast_to(eye, covariance.shape), []
    for _ in range(iterations):
        t = 1.5 * eye - 0.5 * z @ y
        iterates.append((y, z, t))
        y, z = y @ t, t @ z
    root = y * np.sqrt(trace)
    return _Covariance(pre, centered, count, covariance, trace, iterates, root)


def covariance_pool(
    x, kernel=None, bias=None, iterations=5, data_format="channels_last", mask=None
):
    """iSQRT-COV pooling (Li et al., 2018): the root of the covariance.

    With channels last, the features are `relu(x @ kernel + bias)`, or `x`
    without `kernel`. `C` is their covariance over the valid positions,
    divided by their number, and `A = C / tr(C)`. `iterations` steps of
    `T = (3 I - Z Y) / 2`, `Y <- Y T`, `Z <- T Z` from `Y = A`, `Z = I`
    give `Y`, and the output is the upper triangle, row by row, of
    `Y * sqrt(tr(C))`. A covariance of 0 gives zeros. There is no
    `keepdims`: the output is not one value per channel.

    Args:
        x: array of rank 3, 4 or 5 with C channels.
        kernel: optional array of shape `(C, D)`. Defaults to `None`: no
            projection, `D = C`.
        bias: array of shape `(D,)`, with `kernel`.
        iterations: int >= 1. The Newton-Schulz steps.
        data_format: `"channels_last"` or `"channels_first"`.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        The pooled float64 array, of shape `(batch, D * (D + 1) / 2)`.

    Example:

    >>> from keras_globalpool.reference import covariance_pool
    >>> x = np.array([[[0.0, 0.0], [2.0, 0.0]]])  # variances 1 and 0
    >>> np.round(covariance_pool(x), 6)
    array([[1., 0., 0.]])
    """
    x, valid, layout = _flatten(x, data_format, False, mask)
    parts = _covariance_parts(x, valid, kernel, bias, iterations)
    rows, cols = np.triu_indices(parts.root.shape[-1])
    return layout.pooled(parts.root[:, rows, cols])


def covariance_pool_grad(
    x, dy, kernel=None, bias=None, iterations=5, data_format="channels_last", mask=None
):
    """Gradient of `covariance_pool`.

    Where the covariance is 0 (its trace is 0), every gradient is 0.

    Args:
        x: the input of `covariance_pool`.
        dy: gradient of the loss with respect to the pooled output.
        kernel: optional array of shape `(C, D)`.
        bias: array of shape `(D,)`, with `kernel`.
        iterations: int >= 1. The Newton-Schulz steps.
        data_format: `"channels_last"` or `"channels_first"`.
        mask: optional boolean array of shape `(batch, *spatial)`.

    Returns:
        `{"x"}`, plus `"kernel"` and `"bias"` with `kernel`, each gradient
        shaped like its argument.

    Example:

    >>> from keras_globalpool.reference import covariance_pool_grad
    >>> x = np.array([[[0.0], [2.0]]])  # the output is the standard deviation
    >>> covariance_pool_grad(x, np.ones((1, 1)))["x"]
    array([[[-0.5],
            [ 0.5]]])
    """
    x, valid, layout = _flatten(x, data_format, False, mask)
    parts = _covariance_parts(x, valid, kernel, bias, iterations)
    side = parts.root.shape[-1]
    rows, cols = np.triu_indices(side)
    d_root = np.zeros_like(parts.root)
    d_root[:, rows, cols] = layout.flat_pooled(dy, len(rows))
    # root = Y * sqrt(t), with Y the last iterate and t the trace.
    scale = np.sqrt(parts.trace)
    d_y = d_root * scale
    d_trace = np.sum(d_root * parts.root, axis=(1, 2), keepdims=True) / (2 * scale**2)
    # Back through each step: Y' = Y T, Z' = T Z, T = (3 I - Z Y) / 2.
    d_z = np.zeros_like(d_y)
    for y, z, t in reversed(parts.iterates):
        d_t = _t(y) @ d_y + d_z @ _t(z)
        d_y, d_z = d_y @ _t(t) - 0.5 * _t(z) @ d_t, _t(t) @ d_z - 0.5 * d_t @ _t(y)
    # The first Y is A = C / t (the first Z, I, is a constant).
    d_trace = d_trace - np.sum(d_y * parts.covariance, axis=(1, 2), keepdims=True) / (
        parts.trace**2
    )
    zero = np.trace(parts.covariance, axis1=1, axis2=2)[:, None, None] == 0
    d_trace = np.where(zero, 0.0, d_trace)  # t is the constant 1 there
    d_covariance = d_y / parts.trace + d_trace * np.eye(side)
    # C = sum_n c_n c_n^T / count, with c the centered features; their sum is
    # 0, and the mean's gradient takes the mean of theirs out again.
    d_centered = (
        np.einsum("bcd,bnd->bnc", d_covariance + _t(d_covariance), parts.centered)
        / parts.count
    )
    inside = valid[..., None]
    d_features = np.where(
        inside,
        d_centered - d_centered.sum(axis=1, keepdims=True) / parts.count,
        0.0,
    )
    if kernel is None:
        return {"x": layout.feature_map(d_features)}
    d_pre = np.where(parts.pre > 0, d_features, 0.0)
    dx = np.where(inside, d_pre @ np.asarray(kernel, np.float64).T, 0.0)
    return {
        "x": layout.feature_map(dx),
        "kernel": np.einsum("bnc,bnd->cd", x, d_pre),
        "bias": d_pre.sum(axis=(0, 1)),
    }
