"""`GlobalGatedAttentionPooling`: Ilse et al.'s gated-attention MIL pooling."""

import keras
from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.arguments import check_bool, check_positive_int
from keras_globalpool.layers.base_attention_pooling import BaseAttentionPooling


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalGatedAttentionPooling(BaseAttentionPooling):
    """Gated-attention pooling (Ilse et al., 2018) for 1D, 2D and 3D inputs.

    The attention-based multiple-instance-learning (MIL) pooling of Ilse,
    Tomczak and Welling, "Attention-based Deep Multiple Instance Learning"
    (ICML 2018). Each position (instance) `h` gets the score
    `w^T (tanh(V h + b) * sigmoid(U h + c))`; the weights are the softmax
    of the scores over the positions, and the output is the weighted sum of
    the instances. Use it when a label belongs to a bag of instances of
    which few matter, such as the tiles of a histopathology slide: pass the
    bag as a padded `(batch, instances, features)` tensor with a mask.
    `gated=False` gives the paper's ungated attention,
    `w^T tanh(V h + b)`. The weights sum to 1, so each channel's result
    lies between that channel's minimum and maximum. The scores, softmax
    and weighted sum run in float32 under mixed precision, and finite
    inputs always give finite weights; a NaN at a valid position makes that
    sample's output and scores NaN.

    `units` is the hidden size, the paper's `L` (`V` and `U` are `L x M`
    for `M` channels); the authors' code calls it `L` in `GatedAttention`
    and `D` in `Attention`, and uses 128. Their `V`, `U` and `w` all have
    biases; `w`'s bias shifts every score alike, which the softmax cancels,
    so this layer has none.

    Args:
        units: int >= 1. The hidden size of `V` and `U`. Defaults to `128`.
        gated: bool. Multiply by the sigmoid gate `U`. Defaults to `True`.
        kernel_initializer: initializer for the `V`, `U` and `w` kernels.
            Defaults to `"glorot_uniform"`.
        bias_initializer: initializer for the `V` and `U` biases. Defaults
            to `"zeros"`.
        kernel_regularizer: optional regularizer for the kernels.
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

    >>> bags = np.random.rand(2, 10, 32).astype("float32")
    >>> mask = np.arange(10) < np.array([[10], [6]])
    >>> pooled, scores = kgp.GlobalGatedAttentionPooling(units=16)(
    ...     bags, mask=mask, return_attention_scores=True)
    >>> tuple(pooled.shape), tuple(scores.shape)
    ((2, 32), (2, 10))
    >>> keras.ops.convert_to_numpy(scores)[1, 6:].tolist()
    [0.0, 0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        units=128,
        gated=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        data_format=None,
        keepdims=False,
        **kwargs,
    ):
        initializers = (kernel_initializer, bias_initializer, kernel_regularizer)
        super().__init__(*initializers, data_format, keepdims, **kwargs)
        self.units = check_positive_int("units", units)
        self.gated = check_bool("gated", gated)

    def build(self, input_shape):
        self._check_rank(input_shape)
        channels = self._known_channels(input_shape)
        self._set_input_spec(channels)
        self.hidden_kernel = self._kernel("hidden_kernel", (channels, self.units))
        self.hidden_bias = self._bias("hidden_bias", (self.units,))
        if self.gated:
            self.gate_kernel = self._kernel("gate_kernel", (channels, self.units))
            self.gate_bias = self._bias("gate_bias", (self.units,))
        self.score_kernel = self._kernel("score_kernel", (self.units, 1))

    def _logits(self, x):
        """The score per position, with a channel axis of size 1."""
        channel_axis = self._channel_axis(len(x.shape))
        gate = (self.gate_kernel, self.gate_bias) if self.gated else (None, None)
        hidden_kernel, hidden_bias, score_kernel, gate_kernel, gate_bias = (
            None if w is None else ops.cast(w, x.dtype)
            for w in (self.hidden_kernel, self.hidden_bias, self.score_kernel, *gate)
        )
        logits = pool_ops.gated_attention_logits(
            ops.moveaxis(x, channel_axis, -1),
            hidden_kernel,
            hidden_bias,
            score_kernel,
            gate_kernel,
            gate_bias,
        )
        return ops.moveaxis(logits, -1, channel_axis)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "gated": self.gated,
            }
        )
        return config
