"""`GlobalLSEPooling`: log-sum-exp pooling, between average and max."""

import keras
import numpy as np
from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.arguments import check_bool, check_positive_finite
from keras_globalpool.layers.base_global_pooling import BaseGlobalPooling
from keras_globalpool.layers.constraints import ValueRange

# The smallest `r` training leaves: at 0 the formula is 0 / 0, and below it
# the shift by the max would make `exp` overflow instead of preventing it.
R_FLOOR = 1e-3


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalLSEPooling(BaseGlobalPooling):
    """Log-sum-exp (LSE) pooling for 1D, 2D and 3D feature maps.

    Computes `log(mean(exp(r * x))) / r` per channel over the valid
    positions: as `r` goes to 0 it is average pooling, and as `r` grows it
    approaches max pooling, so a learned `r` lets training pick the mix, a
    smooth one (Pinheiro and Collobert, CVPR 2015; timm's `LsePlus2d`).
    Use it where a feature may be present in only part of the map, as in
    weakly supervised localization. The mean is shifted by the largest
    valid value, so nothing overflows for any `r`, and both of its sums are
    blocked (see `keras_globalpool.pool_ops`): the error stays a small
    multiple of the unit roundoff times the largest `|x|`, whatever the map
    size and `r`, near-average pooling (small `r`) included.
    NaN propagates and `+inf` gives `+inf`.

    Training keeps `r` at or above `1e-3`: the weight carries a `ValueRange`
    constraint, which Keras applies after every optimizer step, so however
    large a step is, `r` ends it valid and keeps its gradient. An `r` below
    `1e-3` that did not come from training (an `assign`) is used as `1e-3`.
    A weights file whose `r` is NaN, infinite or not positive is refused
    with a `ValueError`.

    Args:
        r: finite float > 0. The initial sharpness. Defaults to `10.0`.
        trainable_r: bool. Learn `r` with the rest of the model. Defaults to
            `True`.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        keepdims: bool. Keep the spatial axes with size 1. Defaults to
            `False`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of rank 3, 4 or 5.
        mask: optional boolean tensor of shape `(batch, *spatial)`; masked
            positions are left out, and a fully masked sample gives zeros.

    Input shape:
        `(batch, *spatial, channels)` with `"channels_last"`,
        `(batch, channels, *spatial)` with `"channels_first"`.

    Output shape:
        `(batch, channels)`; with `keepdims=True`, the input shape with
        every spatial axis of size 1.

    Example:

    >>> x = np.random.rand(2, 7, 7, 16).astype("float32")
    >>> tuple(kgp.GlobalLSEPooling(r=10.0)(x).shape)
    (2, 16)
    """

    def __init__(
        self, r=10.0, trainable_r=True, data_format=None, keepdims=False, **kwargs
    ):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.r = check_positive_finite("r", r)
        self.trainable_r = check_bool("trainable_r", trainable_r)

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.r_weight = self.add_weight(
            name="r",
            shape=(),
            initializer=keras.initializers.Constant(self.r),
            trainable=self.trainable_r,
            constraint=ValueRange(min_value=R_FLOOR),
            autocast=False,  # r is used in float32 even under mixed precision
        )

    def _check_loaded_weight(self, name, value):
        super()._check_loaded_weight(name, value)
        if name == "r" and not np.all(value > 0):
            self._refuse_weight(name, value, "a finite number > 0")

    def call(self, inputs, mask=None):
        x, mask, axes = self._prepare(inputs, mask)
        r = ops.cast(self.r_weight, x.dtype)
        # Only an `r` set by hand is below the floor: training's constraint
        # keeps it above, where this passes the gradient through.
        r = ops.where(r < R_FLOOR, R_FLOOR, r)  # not `maximum`: float64 on torch
        pooled = pool_ops.global_lse_pool(x, r, axes, mask, self.keepdims)
        return self._finish(pooled)

    def get_config(self):
        config = super().get_config()
        config.update({"r": self.r, "trainable_r": self.trainable_r})
        return config
