"""The base class of the poolings that weight positions by learned scores."""

from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.layers.base_kernel_pooling import BaseKernelPooling


class BaseAttentionPooling(BaseKernelPooling):
    """A pooling that scores every position and takes the weighted mean.

    Subclasses create their weights in `build` with `_kernel` and `_bias`
    (from `BaseKernelPooling`, which holds their initializers), and write
    `_logits(x)`: one logit per position, with a channel axis of size 1.
    This class normalizes the logits over the valid positions
    (`normalization`: `"softmax"`, or `"sigmoid"` scores divided by their
    sum), pools, and returns the scores on request. `kgp.attention_maps`
    reads any subclass. The weights are not autocast: the scores run in
    `reduction_dtype` (float32 under mixed precision), since softmax weights
    of 16-bit logits can be off by a factor of e when the features are in
    the hundreds.

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

    Call arguments:
        inputs: a tensor of rank 3, 4 or 5.
        mask: optional boolean tensor of shape `(batch, *spatial)`.
        return_attention_scores: bool. Also return the weights, shaped
            `(batch, *spatial)`, summing to 1 over the valid positions.

    Example:

    >>> isinstance(kgp.GlobalAttentionPooling(), kgp.BaseAttentionPooling)
    True
    """

    normalization = "softmax"

    def _logits(self, x):
        raise NotImplementedError

    def call(self, inputs, mask=None, return_attention_scores=False):
        x, mask, axes = self._prepare(inputs, mask)
        weights = pool_ops.normalize_scores(
            self._logits(x), axes, mask, self.normalization
        )
        pooled = self._finish(
            pool_ops.global_weighted_pool(x, weights, axes, self.keepdims)
        )
        if not return_attention_scores:
            return pooled
        channel_axis = self._channel_axis(len(x.shape))
        return pooled, self._finish(ops.squeeze(weights, axis=channel_axis))

    def compute_output_spec(self, inputs, mask=None, return_attention_scores=False):
        return self._scores_output_spec(inputs, mask, return_attention_scores)
