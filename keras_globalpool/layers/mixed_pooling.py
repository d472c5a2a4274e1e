"""`GlobalMixedPooling`: average and max pooling together."""

import keras
from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.arguments import check_option
from keras_globalpool.layers.base_global_pooling import BaseGlobalPooling
from keras_globalpool.layers.constraints import ValueRange

MODES = ("concat", "mean", "learned")


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalMixedPooling(BaseGlobalPooling):
    """Global average and max pooling combined, for 1D, 2D and 3D maps.

    The head then sees both how strongly a feature is present overall and
    its peak. `"concat"` (timm's `catavgmax`) stacks `[avg, max]` along the
    channel axis, giving twice the channels; `"mean"` gives
    `0.5 * (avg + max)`; `"learned"` gives `g * avg + (1 - g) * max` with a
    trainable per-channel gate `g`, initialized at 0.5. Training keeps the
    gate in [0, 1]: it carries a `ValueRange` constraint, applied after
    every optimizer step, so it keeps its gradient at any step size; a gate
    set by hand outside [0, 1] is clipped when used, and a weights file
    with a NaN or infinite gate is refused with a `ValueError`. The mean is
    a blocked sum, as in `GlobalAveragePooling`: its error does not grow
    with the map size; the max is exact.

    Args:
        mode: string, one of `"concat"`, `"mean"`, `"learned"`. Defaults to
            `"concat"`.
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
        `(batch, k * channels)`, where `k` is 2 for `"concat"` and 1
        otherwise; with `keepdims=True`, the spatial axes stay with size 1.

    Example:

    >>> x = np.random.rand(2, 7, 7, 16).astype("float32")
    >>> tuple(kgp.GlobalMixedPooling()(x).shape)
    (2, 32)
    """

    def __init__(self, mode="concat", data_format=None, keepdims=False, **kwargs):
        super().__init__(data_format=data_format, keepdims=keepdims, **kwargs)
        self.mode = check_option("mode", mode, MODES)
        # Only the learned gate is a weight. A subclass with its own `build`
        # is left to build, as Keras leaves any layer that overrides it.
        if self.mode != "learned" and type(self).build is GlobalMixedPooling.build:
            self._build_without_weights()

    @property
    def channel_multiplier(self):
        return 2 if self.mode == "concat" else 1

    def build(self, input_shape):
        self._check_rank(input_shape)
        if self.mode != "learned":  # built at creation; nothing to add
            return
        channels = self._known_channels(input_shape)
        self._set_input_spec(channels)
        self.gate = self.add_weight(
            name="gate",
            shape=(channels,),
            initializer=keras.initializers.Constant(0.5),
            constraint=ValueRange(min_value=0.0, max_value=1.0),
            autocast=False,  # mixed in float32 even under mixed precision
        )

    def call(self, inputs, mask=None):
        x, mask, axes = self._prepare(inputs, mask)
        # Masked, from `x`: the masked max needs finite values where it masks.
        peaks = self._peaks(inputs if mask is None else x)
        avg, peak = pool_ops.global_avg_max_pool(
            x, axes, mask, self.keepdims, peaks=peaks
        )
        channel_axis = self._channel_axis(len(avg.shape))
        if self.mode == "concat":
            return self._finish(ops.concatenate([avg, peak], axis=channel_axis))
        if self.mode == "mean":
            return self._finish(0.5 * (avg + peak))
        # The constraint keeps a trained gate in [0, 1], where the clip passes
        # the gradient; it only clips gates set by hand.
        gate = ops.clip(ops.cast(self.gate, avg.dtype), 0.0, 1.0)
        if channel_axis != len(avg.shape) - 1:
            gate = ops.reshape(gate, (-1,) + (1,) * (len(avg.shape) - 2))
        return self._finish(gate * avg + (1.0 - gate) * peak)

    def _peaks(self, inputs):
        """The 16-bit map to take the maximum of, or None to take it of the
        map `_prepare` gave.

        A maximum is exact in any dtype. On jax and torch a 16-bit map's is
        taken in 16 bits: on jax, the maximum of its float32 copy, fused with
        the sum, made mixed up to 5x slower than Keras's layers. TensorFlow's
        XLA took it up to 1.7x faster in float32 (`docs/benchmarks.md`), and
        graph mode takes the fast path on `x`.
        """
        compute_dtype = keras.backend.standardize_dtype(self.compute_dtype)
        if keras.backend.backend() == "tensorflow":
            return None
        if compute_dtype == self.reduction_dtype:  # not 16-bit: no copy was made
            return None
        return ops.cast(inputs, compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
