"""`GlobalAttentionPooling`: a learned, attention-weighted mean."""

import keras
from keras import ops

from keras_globalpool.arguments import check_option, check_positive_int
from keras_globalpool.layers.base_attention_pooling import BaseAttentionPooling

NORMALIZATIONS = ("sigmoid", "softmax")


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalAttentionPooling(BaseAttentionPooling):
    """Attention-weighted global pooling for 1D, 2D and 3D feature maps.

    A small branch scores every position: a 1x1 convolution to
    `max(channels // reduction, 1)` units, ReLU, and a 1x1 convolution to one
    logit. The output is each channel's mean weighted by those scores, so the
    layer learns where to look; it is common in medical imaging, where the
    lesion covers a small part of the scan. `"sigmoid"` weights are
    `sigmoid(z) / sum(sigmoid(z))`; `"softmax"` weights are `softmax(z)`.
    Either way the weights sum to 1 and the output is a convex combination:
    each channel's result lies between that channel's minimum and maximum.
    Finite inputs always give finite weights, even where the branch
    overflows; a NaN at a valid position makes that sample's output and
    scores NaN, since every weight depends on it. The weights' normalizer
    and the weighted sum are blocked sums (see `keras_globalpool.pool_ops`), so
    their rounding error does not grow with the map size.

    Args:
        reduction: int >= 1. The bottleneck's channel reduction. Defaults to
            `8`.
        normalize: string, `"sigmoid"` or `"softmax"`. Defaults to
            `"sigmoid"`.
        kernel_initializer: initializer for both 1x1 kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer for both biases. Defaults to `"zeros"`.
        kernel_regularizer: optional regularizer for both 1x1 kernels.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        keepdims: bool. Keep the spatial axes with size 1. Defaults to
            `False`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of rank 3, 4 or 5.
        mask: optional boolean tensor of shape `(batch, *spatial)`; masked
            positions get zero weight, and a fully masked sample gives zeros.
        return_attention_scores: bool. Also return the weights, of shape
            `(batch, *spatial)`. Defaults to `False`.

    Input shape:
        `(batch, *spatial, channels)` with `"channels_last"`,
        `(batch, channels, *spatial)` with `"channels_first"`.

    Output shape:
        `(batch, channels)`; with `keepdims=True`, the input shape with
        every spatial axis of size 1. With `return_attention_scores=True`,
        a tuple `(pooled, scores)`.

    Example:

    >>> x = np.random.rand(2, 7, 7, 16).astype("float32")
    >>> pooled, scores = kgp.GlobalAttentionPooling()(
    ...     x, return_attention_scores=True)
    >>> tuple(pooled.shape), tuple(scores.shape)
    ((2, 16), (2, 7, 7))
    """

    def __init__(
        self,
        reduction=8,
        normalize="sigmoid",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        data_format=None,
        keepdims=False,
        **kwargs,
    ):
        initializers = (kernel_initializer, bias_initializer, kernel_regularizer)
        super().__init__(*initializers, data_format, keepdims, **kwargs)
        self.reduction = check_positive_int("reduction", reduction)
        self.normalize = check_option("normalize", normalize, NORMALIZATIONS)
        self.normalization = self.normalize

    def build(self, input_shape):
        self._check_rank(input_shape)
        channels = self._known_channels(input_shape)
        self._set_input_spec(channels)
        units = max(channels // self.reduction, 1)
        self.hidden_kernel = self._kernel("hidden_kernel", (channels, units))
        self.hidden_bias = self._bias("hidden_bias", (units,))
        self.score_kernel = self._kernel("score_kernel", (units, 1))
        self.score_bias = self._bias("score_bias", (1,))

    def _logits(self, x):
        """The branch's logit per position, with a channel axis of size 1."""
        channel_axis = self._channel_axis(len(x.shape))
        hidden_kernel, hidden_bias, score_kernel, score_bias = (
            ops.cast(w, x.dtype) for w in self.weights
        )
        features = ops.moveaxis(x, channel_axis, -1)
        # `einsum`, not `matmul` or `tensordot`: Keras's torch versions of
        # those compute float64 in float32. Explicit subscripts, not `...`:
        # on TensorFlow the gradient of a `...` einsum materializes a
        # (batch, *spatial, channels, units) tensor, gigabytes for ResNet maps.
        positions = "bxyz"[: len(x.shape) - 1]
        hidden = ops.einsum(f"{positions}c,cu->{positions}u", features, hidden_kernel)
        hidden = ops.relu(hidden + hidden_bias)
        logits = ops.einsum(f"{positions}u,uk->{positions}k", hidden, score_kernel)
        logits = logits + score_bias
        # Finite inputs near the dtype's limit overflow the branch to +-inf,
        # or to inf - inf = NaN. Those logits become finite (the largest
        # finite values, and 0 for NaN), so the weights stay finite. A
        # position that holds a NaN keeps a NaN logit: the NaN spreads to the
        # whole sample instead of vanishing from the other channels.
        has_nan = ops.any(ops.isnan(features), axis=-1, keepdims=True)
        logits = ops.where(has_nan, float("nan"), ops.nan_to_num(logits, nan=0.0))
        return ops.moveaxis(logits, -1, channel_axis)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "normalize": self.normalize,
            }
        )
        return config
