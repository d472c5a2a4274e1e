"""`GlobalGeMPooling`: the generalized (power) mean."""

import keras
import numpy as np
from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.arguments import check_bool, check_positive_finite
from keras_globalpool.layers.base_global_pooling import BaseGlobalPooling
from keras_globalpool.layers.constraints import ValueRange

# The smallest `p` training leaves: at 0 and below the formula has no meaning.
P_FLOOR = 1e-3


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalGeMPooling(BaseGlobalPooling):
    """Generalized-mean (GeM) pooling for 1D, 2D and 3D feature maps.

    Computes `mean(max(x, eps) ** p) ** (1 / p)` per channel: `p = 1` is
    average pooling, and as `p` grows it approaches max pooling. It is the
    standard pooling for image retrieval (Radenović et al.). Inputs below
    `eps` (negative ones and `-inf` included) are clamped to `eps`; NaN
    propagates and `+inf` gives `+inf`. The layer works in
    log space, so neither a large `p` nor float16 inputs overflow, and an
    all-zero input has finite gradients. The sum of powers is blocked (see
    `keras_globalpool.pool_ops`): its error does not grow with the map size, and
    enters the output divided by `p`.

    Training keeps `p` at or above `1e-3`: the weight carries a `ValueRange`
    constraint, which Keras applies after every optimizer step, so however
    large a step is, `p` ends it valid and keeps its gradient. A `p` below
    `1e-3` that did not come from training (a constructor value, an
    `assign`) is used as `1e-3`. A weights file whose `p` is NaN, infinite
    or not positive is refused with a `ValueError`.

    Args:
        p: finite float > 0. The initial exponent. Defaults to `3.0`.
        trainable_p: bool. Learn `p` with the rest of the model. Defaults to
            `True`.
        eps: finite float > 0. The clamp floor. Defaults to `1e-6`.
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
    >>> tuple(kgp.GlobalGeMPooling(p=3.0)(x).shape)
    (2, 16)
    """

    def __init__(
        self,
        p=3.0,
        trainable_p=True,
        eps=1e-6,
        data_format=None,
        keepdims=False,
        **kwargs,
    ):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.p = check_positive_finite("p", p)
        self.trainable_p = check_bool("trainable_p", trainable_p)
        self.eps = check_positive_finite("eps", eps)

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.p_weight = self.add_weight(
            name="p",
            shape=(),
            initializer=keras.initializers.Constant(self.p),
            trainable=self.trainable_p,
            constraint=ValueRange(min_value=P_FLOOR),
            autocast=False,  # p is used in float32 even under mixed precision
        )

    def _check_loaded_weight(self, name, value):
        super()._check_loaded_weight(name, value)
        if name == "p" and not np.all(value > 0):
            self._refuse_weight(name, value, "a finite number > 0")

    def call(self, inputs, mask=None):
        x, mask, axes = self._prepare(inputs, mask)
        p = ops.cast(self.p_weight, x.dtype)
        # Only a `p` set by hand is below the floor: training's constraint
        # keeps it above, where this passes the gradient through.
        p = ops.where(p < P_FLOOR, P_FLOOR, p)  # not `maximum`: float64 on torch
        pooled = pool_ops.global_gem_pool(x, p, axes, mask, self.eps, self.keepdims)
        return self._finish(pooled)

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p, "trainable_p": self.trainable_p, "eps": self.eps})
        return config
