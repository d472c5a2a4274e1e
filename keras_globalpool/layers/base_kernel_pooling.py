"""The base class of the poolings with learned kernels and biases."""

import keras

from keras_globalpool.layers.base_global_pooling import BaseGlobalPooling


class BaseKernelPooling(BaseGlobalPooling):
    """A pooling whose weights include kernels and biases the user initializes.

    It holds the initializers and the kernel regularizer, creates the
    weights with `_kernel` and `_bias`, and puts all three in the config.
    The weights are not autocast: subclasses compute with them in
    `reduction_dtype` (float32 under mixed precision).

    Args:
        kernel_initializer: initializer of the kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer of the biases. Defaults to `"zeros"`.
        kernel_regularizer: optional regularizer of the kernels.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        keepdims: bool. Keep the spatial axes with size 1. Defaults to
            `False`.
        **kwargs: base layer arguments, such as `name` and `dtype`.
    """

    def __init__(
        self,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        data_format=None,
        keepdims=False,
        **kwargs,
    ):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _kernel(self, name, shape):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            autocast=False,
        )

    def _bias(self, name, shape):
        return self.add_weight(
            name=name, shape=shape, initializer=self.bias_initializer, autocast=False
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config
