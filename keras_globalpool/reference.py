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
`gated_attention_pool_grad`. Each gradient has its argument's shape; masked
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
