"""Pure-NumPy forward and backward passes of every pooling: the test oracle.

Written with NumPy only, independently of Keras and of `keras_globalpool.pool_ops`,
so that the layers can be checked against it. Every function takes `x` of rank
3, 4 or 5 (a 1D, 2D or 3D feature map with batch and channel axes) and

- `data_format`: `"channels_last"` (`(batch, *spatial, channels)`) or
  `"channels_first"` (`(batch, channels, *spatial)`);
- `keepdims`: keep the spatial axes with size 1 in the pooled output;
- `mask`: optional boolean array of shape `(batch, *spatial)`, True where a
  position is valid. Masked positions never change a result, whatever they
  hold (NaN and inf included), and a sample with no valid position pools to
  zeros.

Everything is computed and returned in float64.

Backward convention: each `*_grad(x, dy, ...)` function takes `dy`, the
gradient of a scalar loss with respect to the pooled output (shaped like that
output), and returns a dict keyed by the name of each differentiable argument:
`{"x": dx}` for `avg_pool_grad`, `max_pool_grad` and `mixed_pool_grad`
(plus `"gate"` when `mode="learned"`), `{"x", "p"}` for `gem_pool_grad`,
`{"x", "r"}` for `lse_pool_grad`, and
`{"x", "hidden_kernel", "hidden_bias", "score_kernel", "score_bias"}` for
`attention_pool_grad`, and `{"x", "hidden_kernel", "hidden_bias",
"score_kernel"}` plus `"gate_kernel"` and `"gate_bias"` when gated for
`gated_attention_pool_grad`, and `{"x"}` plus `"kernel"` and `"bias"` with a
projection for `covariance_pool_grad` (which, like `covariance_pool`, has no
`keepdims`). Each gradient has its argument's shape; masked
positions of `x` get zero gradient.

Where the function is not differentiable, the gradient follows TensorFlow:

- max: positions tied for the maximum share the gradient equally;
- GeM: `max(x, eps)` passes the gradient to `x` where `x >= eps`, else 0;
- learned gate: `clip(gate, 0, 1)` passes the gradient where
  `0 <= gate <= 1`, else 0;
- ReLU in the attention branch: the gradient at exactly 0 is 0.

Example:

>>> from keras_globalpool.reference import avg_pool, max_pool_grad
>>> x = np.arange(12.0).reshape(1, 2, 2, 3)
>>> avg_pool(x)
array([[4.5, 5.5, 6.5]])
>>> max_pool_grad(x, np.ones((1, 3)))["x"].shape
(1, 2, 2, 3)
"""

import math
from typing import NamedTuple

import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")
MIXED_MODES = ("concat", "mean", "learned")
NORMALIZATIONS = ("sigmoid", "softmax")


# === Layout helpers ===


def _check_option(name, value, allowed):
    if value not in allowed:
        choices = "{" + ", ".join(repr(a) for a in allowed) + "}"
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )


class _Layout(NamedTuple):
    """How to map the flat `(batch, positions, channels)` view back."""

    data_format: str
    keepdims: bool
    batch: int
    spatial: tuple

    def pooled(self, y):
        """`(batch, channels)` -> the pooled output's shape."""
        if self.keepdims:
            y = y.reshape((self.batch,) + (1,) * len(self.spatial) + (-1,))
            if self.data_format == "channels_first":
                y = np.moveaxis(y, -1, 1)
        return y

    def flat_pooled(self, dy, channels):
        """The pooled output's shape -> `(batch, channels)`."""
        dy = np.asarray(dy, dtype=np.float64)
        expected = self.pooled(np.zeros((self.batch, channels))).shape
        if dy.shape != expected:
            raise ValueError(
                f"`dy` must have the pooled output's shape {expected}. "
                f"Received: dy.shape={dy.shape}"
            )
        # Spatial axes of size 1 hold no data, so a reshape drops them.
        return dy.reshape(self.batch, channels)

    def feature_map(self, dx):
        """`(batch, positions, channels)` -> `x`'s shape."""
        dx = dx.reshape((self.batch,) + self.spatial + (-1,))
        if self.data_format == "channels_first":
            dx = np.moveaxis(dx, -1, 1)
        return dx

    def positions(self, w):
        """`(batch, positions)` -> `(batch, *spatial)`."""
        return w.reshape((self.batch,) + self.spatial)


def _flatten(x, data_format, keepdims, mask):
    """Returns `(x, valid, layout)`: `x` as float64 `(batch, positions,
    channels)` with masked positions set to 0, and `valid` as a boolean
    `(batch, positions)` array."""
    _check_option("data_format", data_format, DATA_FORMATS)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (3, 4, 5):
        raise ValueError(f"`x` must have rank 3, 4 or 5. Received: x.shape={x.shape}")
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    layout = _Layout(data_format, bool(keepdims), batch, spatial)
    x = x.reshape(batch, -1, channels)
    if mask is None:
        return x, np.ones(x.shape[:2], dtype=bool), layout
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (batch,) + spatial:
        raise ValueError(
            f"`mask` must have shape (batch, *spatial) = {(batch,) + spatial}. "
            f"Received: mask.shape={mask.shape}"
        )
    valid = mask.reshape(batch, -1)
    # `where`, not a product, so that NaN and inf at masked positions vanish.
    return np.where(valid[..., None], x, 0.0), valid, layout


def _count(valid):
    """Valid positions per sample, as `(batch, 1)`; at least 1 to divide by."""
    return np.maximum(valid.sum(axis=1), 1)[:, None].astype(np.float64)


# === Flat kernels on (batch, positions, channels) ===


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


def _masked_softmax(logits, valid):
    """Softmax over the last axis, valid entries only; all zeros if none."""
    peak = np.where(valid, logits, -np.inf).max(axis=-1, keepdims=True)
    shifted = np.where(valid, logits - np.where(np.isfinite(peak), peak, 0.0), 0.0)
    e = np.where(valid, np.exp(shifted), 0.0)
    return e / np.maximum(e.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)


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


# === Forward ===


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


# === Multi-head attention pooling (MAP) ===

# The epsilon of MAP's layer norms (timm's ViT, SigLIP).
LAYER_NORM_EPSILON = 1e-6


def _layer_norm(x, gamma, beta, epsilon=LAYER_NORM_EPSILON):
    """Layer norm over the last axis; returns `(y, (x_hat, inv_std))`.

    Centered twice: the second pass removes the rounding error of the first
    mean, which is of the values' size and would dominate the centered
    values of channels that agree to many digits.
    """
    centered = x - x.mean(axis=-1, keepdims=True)
    centered = centered - centered.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt(np.mean(centered**2, axis=-1, keepdims=True) + epsilon)
    x_hat = centered * inv_std
    return x_hat * gamma + beta, (x_hat, inv_std)


def _layer_norm_grad(dy, gamma, cache):
    """Returns `(dx, dgamma, dbeta)` of `_layer_norm`."""
    x_hat, inv_std = cache
    d_hat = dy * gamma
    dx = inv_std * (
        d_hat
        - d_hat.mean(axis=-1, keepdims=True)
        - x_hat * np.mean(d_hat * x_hat, axis=-1, keepdims=True)
    )
    leading = tuple(range(dy.ndim - 1))
    return dx, np.sum(dy * x_hat, axis=leading), np.sum(dy, axis=leading)


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


# === Backward ===


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


def _t(a):
    """The transpose of each matrix of a batch."""
    return np.swapaxes(a, -1, -2)


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


# === SimPool ===

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
