"""`GlobalSimPooling`: SimPool, attention pooling with the mean as its query."""

import keras
from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.arguments import (
    check_bool,
    check_positive_finite,
    check_positive_int,
)
from keras_globalpool.layers.base_kernel_pooling import BaseKernelPooling


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalSimPooling(BaseKernelPooling):
    """SimPool (Psomas et al., ICCV 2023) for 1D, 2D and 3D feature maps.

    The pooling of "Keep It SimPool: Who Said Supervised Transformers Suffer
    from Attention Deficit?", computed as timm's `SimPool2d` and
    `SimPool1d`. The query is the average pooling of the features, projected
    by a learned kernel; the keys are the layer-normalized features,
    projected; each head's weights are the softmax over the positions of its
    query-key products scaled by `head_dim ** -0.5`, and it pools its
    `channels // num_heads` channels of the layer-normalized features with
    them. Use it in place of average pooling on a CNN or a transformer when
    the object covers part of the map: the weights are an attention map that
    follows it, at the cost of two `channels x channels` kernels. With
    `gamma`, each channel is a weighted power mean instead: its values are
    shifted by their minimum over the positions (plus `1e-6`), raised to
    `gamma`, pooled, and raised to `1 / gamma`.

    The output is that of the normalized features: for `gamma=None`, each
    channel lies within the bounds of its normalized values. Layer norm,
    softmax and the weighted sums run in float32 under mixed precision. A
    NaN at a valid position makes its sample's output and scores NaN, as
    does an infinite value (the layer norm of `inf` is undefined); finite
    inputs up to the dtype's largest value give finite weights.

    Args:
        num_heads: int >= 1. The attention heads; must divide the number of
            channels. Defaults to `1`, as timm's.
        qkv_bias: bool. Add biases to the query and key projections.
            Defaults to `False`.
        qk_norm: bool. Layer-normalize each head's query and keys. Defaults
            to `False`.
        gamma: optional finite float > 0. The power mean's exponent.
            Defaults to `None`: the weighted sum.
        layer_norm_epsilon: finite float > 0. The layer norms' epsilon.
            Defaults to `1e-5`, that of timm's (torch's) `nn.LayerNorm`.
        kernel_initializer: initializer for the query and key kernels.
            Defaults to `"glorot_uniform"`.
        bias_initializer: initializer for their biases. Defaults to
            `"zeros"`.
        kernel_regularizer: optional regularizer for the two kernels.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        keepdims: bool. Keep the spatial axes with size 1. Defaults to
            `False`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of rank 3, 4 or 5.
        mask: optional boolean tensor of shape `(batch, *spatial)`; masked
            positions are left out of the query, the weights and the
            minimum, and a fully masked sample gives zeros.
        return_attention_scores: bool. Also return the weights, of shape
            `(batch, num_heads, *spatial)` (heads after the batch, as in
            `keras.layers.MultiHeadAttention`), each head's summing to 1
            over the valid positions. Defaults to `False`.

    Input shape:
        `(batch, *spatial, channels)` with `"channels_last"`,
        `(batch, channels, *spatial)` with `"channels_first"`.

    Output shape:
        `(batch, channels)`; with `keepdims=True`, the input shape with
        every spatial axis of size 1. With `return_attention_scores=True`,
        a tuple `(pooled, scores)`.

    Example:

    >>> x = np.random.rand(2, 7, 7, 16).astype("float32")
    >>> pooled, scores = kgp.GlobalSimPooling(num_heads=4)(
    ...     x, return_attention_scores=True)
    >>> tuple(pooled.shape), tuple(scores.shape)
    ((2, 16), (2, 4, 7, 7))
    """

    def __init__(
        self,
        num_heads=1,
        qkv_bias=False,
        qk_norm=False,
        gamma=None,
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        data_format=None,
        keepdims=False,
        **kwargs,
    ):
        initializers = (kernel_initializer, bias_initializer, kernel_regularizer)
        super().__init__(*initializers, data_format, keepdims, **kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.qkv_bias = check_bool("qkv_bias", qkv_bias)
        self.qk_norm = check_bool("qk_norm", qk_norm)
        self.gamma = check_positive_finite("gamma", gamma, allow_none=True)
        self.layer_norm_epsilon = check_positive_finite(
            "layer_norm_epsilon", layer_norm_epsilon
        )

    def build(self, input_shape):
        self._check_rank(input_shape)
        channels = self._known_channels(input_shape)
        if channels % self.num_heads:
            raise ValueError(
                f"`{type(self).__name__}` needs a channel count divisible by "
                "`num_heads`: each head pools channels // num_heads of them. "
                f"Received: num_heads={self.num_heads}, channels={channels} "
                f"(input_shape={tuple(input_shape)})"
            )
        self._set_input_spec(channels)
        head_dim = channels // self.num_heads
        self.norm_gamma, self.norm_beta = self._norm("norm", channels)
        self.query_kernel = self._kernel("query_kernel", (channels, channels))
        if self.qkv_bias:
            self.query_bias = self._bias("query_bias", (channels,))
        self.key_kernel = self._kernel("key_kernel", (channels, channels))
        if self.qkv_bias:
            self.key_bias = self._bias("key_bias", (channels,))
        if self.qk_norm:
            self.query_norm_gamma, self.query_norm_beta = self._norm(
                "query_norm", head_dim
            )
            self.key_norm_gamma, self.key_norm_beta = self._norm("key_norm", head_dim)

    def _norm(self, name, size):
        """A layer norm's scale and offset (Keras's `gamma` and `beta`),
        initialized as torch's: 1 and 0."""
        return tuple(
            self.add_weight(
                name=f"{name}_{part}", shape=(size,), initializer=init, autocast=False
            )
            for part, init in (("gamma", "ones"), ("beta", "zeros"))
        )

    # Without qk_norm the keys are never formed: see `pool_ops.global_sim_pool`.
    # Tests set this to False, to compare with the keys formed.
    fold_projections = True

    def call(self, inputs, mask=None, return_attention_scores=False):
        x, mask, _ = self._prepare(inputs, mask)
        rank = len(x.shape)
        channel_axis = self._channel_axis(rank)
        weights = {
            name: ops.cast(getattr(self, name), x.dtype)
            for name in pool_ops.SIM_POOL_WEIGHTS
            if hasattr(self, name)
        }
        pooled, scores = pool_ops.global_sim_pool(
            ops.moveaxis(x, channel_axis, -1),
            weights,
            num_heads=self.num_heads,
            mask=None if mask is None else ops.moveaxis(mask, channel_axis, -1),
            gamma=self.gamma,
            epsilon=self.layer_norm_epsilon,
            fold_keys=self.fold_projections,
        )
        if self.keepdims:
            for axis in self._spatial_axes(rank):
                pooled = ops.expand_dims(pooled, axis)
        pooled = self._finish(pooled)
        if not return_attention_scores:
            return pooled
        return pooled, self._finish(ops.moveaxis(scores, -1, 1))

    def compute_output_spec(self, inputs, mask=None, return_attention_scores=False):
        return self._scores_output_spec(
            inputs, mask, return_attention_scores, queries=(self.num_heads,)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "qkv_bias": self.qkv_bias,
                "qk_norm": self.qk_norm,
                "gamma": self.gamma,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
