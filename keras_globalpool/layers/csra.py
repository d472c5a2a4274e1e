"""`ClassSpecificResidualAttention`: Zhu & Wu's CSRA head, feature maps to logits."""

import keras
from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.arguments import (
    check_positive_finite,
    check_positive_int,
    check_rate,
    is_positive_int,
)
from keras_globalpool.layers.base_kernel_pooling import BaseKernelPooling


@keras.saving.register_keras_serializable(package="keras_globalpool")
class ClassSpecificResidualAttention(BaseKernelPooling):
    """Class-specific residual attention (CSRA) for 1D, 2D and 3D feature maps.

    The head of Zhu and Wu, "Residual Attention: A Simple but Effective
    Method for Multi-Label Recognition" (ICCV 2021), which maps a feature
    map straight to class logits. Each class `k` of each head `h` scores
    every position with a normalized 1x1 projection,
    `s = x . w_hk / ||w_hk||`; the head's logit is the mean of `s` over the
    positions plus `lam` times a spatial attention logit, the sum of `s`
    weighted by `softmax(T_h * s)`, or the max of `s` for `T_h = inf`. The
    logits of the heads are summed. `num_heads` picks the paper's
    temperatures: 1: (1); 2: (1, inf); 4: (1, 2, 4, inf); 6: (1, ..., 5,
    inf); 8: (1, ..., 7, inf). Use it for multi-label images, where each
    class may sit in its own small region; apply a sigmoid to the logits
    (`kgp.build_classifier(..., pooling="csra", activation="sigmoid")`
    does). The scores, softmaxes and means run in float32 under mixed
    precision, over the valid positions only; a fully masked sample gives
    zero logits.

    The weights are the authors' bias-free 1x1 convolutions, one per head:
    `kernel[h, :, k]` is their `multi_head[h].head.weight[k, :, 0, 0]`. A
    class kernel's norm is taken as at least 1e-12, so an all-zero kernel
    scores 0 where theirs divides 0 by 0.

    Args:
        num_classes: int >= 1. The number of logits.
        num_heads: int, one of 1, 2, 4, 6, 8. Defaults to `1`, as the
            authors' default.
        lam: float > 0. The weight of the attention logits, the paper's
            lambda. Defaults to `0.1`, the authors' default.
        dropout: float in [0, 1). The rate of dropout on the feature map in
            training, before the scores. Defaults to `0.0`.
        kernel_initializer: initializer of the kernel. Defaults to
            `"glorot_uniform"`; only its direction matters.
        kernel_regularizer: optional regularizer of the kernel.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of rank 3, 4 or 5.
        mask: optional boolean tensor of shape `(batch, *spatial)`; masked
            positions are left out, and a fully masked sample gives zeros.
        training: bool. Whether dropout applies.

    Input shape:
        `(batch, *spatial, channels)` with `"channels_last"`,
        `(batch, channels, *spatial)` with `"channels_first"`.

    Output shape:
        `(batch, num_classes)`: logits. There is no `keepdims`: the output
        is not one value per channel.

    Example:

    >>> x = np.random.rand(2, 7, 7, 64).astype("float32")
    >>> head = kgp.ClassSpecificResidualAttention(num_classes=20, num_heads=4)
    >>> tuple(head(x).shape), tuple(head.kernel.shape)
    ((2, 20), (4, 64, 20))
    """

    def __init__(
        self,
        num_classes,
        num_heads=1,
        lam=0.1,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        data_format=None,
        **kwargs,
    ):
        self._refuse_keepdims(kwargs, "one logit per class")
        initializers = (kernel_initializer, "zeros", kernel_regularizer)
        super().__init__(*initializers, data_format, keepdims=False, **kwargs)
        self.num_classes = check_positive_int("num_classes", num_classes)
        if (
            not is_positive_int(num_heads)
            or num_heads not in pool_ops.CSRA_TEMPERATURES
        ):
            allowed = ", ".join(str(h) for h in pool_ops.CSRA_TEMPERATURES)
            raise ValueError(
                f"`num_heads` must be one of {{{allowed}}}, the paper's "
                f"temperature settings. Received: num_heads={num_heads!r}"
            )
        self.num_heads = num_heads
        self.lam = check_positive_finite("lam", lam)
        self.dropout = check_rate("dropout", dropout)
        self.seed_generator = keras.random.SeedGenerator() if dropout else None

    @property
    def temperatures(self):
        """The softmax temperature of each head; `inf` takes the max."""
        return pool_ops.CSRA_TEMPERATURES[self.num_heads]

    def build(self, input_shape):
        self._check_rank(input_shape)
        channels = self._known_channels(input_shape)
        self._set_input_spec(channels)
        shape = (self.num_heads, channels, self.num_classes)
        self.kernel = self._kernel("kernel", shape)

    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        return (input_shape[0], self.num_classes)

    def call(self, inputs, mask=None, training=None):
        x, mask, _ = self._prepare(inputs, mask)
        channel_axis = self._channel_axis(len(x.shape))
        features = ops.moveaxis(x, channel_axis, -1)
        if mask is not None:
            mask = ops.moveaxis(mask, channel_axis, -1)
        if training and self.dropout:
            features = keras.random.dropout(
                features, self.dropout, seed=self.seed_generator
            )
        kernel = ops.cast(self.kernel, features.dtype)
        logits = pool_ops.csra_logits(
            features, kernel, self.temperatures, self.lam, mask
        )
        return self._finish(logits)

    def get_config(self):
        config = super().get_config()
        del config["keepdims"], config["bias_initializer"]
        config.update(
            {
                "num_classes": self.num_classes,
                "num_heads": self.num_heads,
                "lam": self.lam,
                "dropout": self.dropout,
            }
        )
        return config
