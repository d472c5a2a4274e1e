"""`GlobalMaxPooling`: the maximum over every spatial position."""

import keras

from keras_globalpool import pool_ops
from keras_globalpool.layers.base_global_pooling import BaseGlobalPooling


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalMaxPooling(BaseGlobalPooling):
    """Global max pooling for 1D, 2D and 3D feature maps.

    Use it when the decision rests on a feature's peak wherever it appears,
    such as detecting a small object. Unlike `keras.layers.GlobalMaxPooling1D`
    it takes a mask: padded steps never win the maximum.

    Args:
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

    >>> x = np.random.rand(2, 50, 8).astype("float32")
    >>> tuple(kgp.GlobalMaxPooling()(x).shape)
    (2, 8)
    """

    @property
    def reduction_dtype(self):
        # A maximum neither rounds nor overflows: 16-bit maps need no float32 copy.
        return keras.backend.standardize_dtype(self.compute_dtype)

    def call(self, inputs, mask=None):
        x, mask, axes = self._prepare(inputs, mask)
        return self._finish(pool_ops.global_max_pool(x, axes, mask, self.keepdims))
