"""Argument checks and the flattening every reference pooling starts from."""

from typing import NamedTuple

import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")


MIXED_MODES = ("concat", "mean", "learned")


NORMALIZATIONS = ("sigmoid", "softmax")


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


def _t(a):
    """The transpose of each matrix of a batch."""
    return np.swapaxes(a, -1, -2)
