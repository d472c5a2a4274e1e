"""The base class every keras-globalpool layer shares."""

import keras
import numpy as np
from keras import ops

from keras_globalpool.arguments import DATA_FORMATS, check_option

_RANKS = (3, 4, 5)
_LOW_PRECISION = ("float16", "bfloat16")
_FLOATS = (*_LOW_PRECISION, "float32", "float64")
_POLICIES = (*_FLOATS, "mixed_float16", "mixed_bfloat16")


def _cast(x, dtype):
    """`ops.cast`, skipped for a backend tensor that has `dtype` already.

    The cast would return it unchanged, after a dispatch that costs, in
    torch's eager calls, about a tenth of the time of a small map's pooling.
    """
    if ops.is_tensor(x) and keras.backend.standardize_dtype(x.dtype) == dtype:
        return x
    return ops.cast(x, dtype)


class BaseGlobalPooling(keras.layers.Layer):
    """Global pooling over every spatial axis of a 1D, 2D or 3D feature map.

    It validates `data_format` and the input rank, finds the spatial and
    channel axes from the rank, applies masks, computes 16-bit inputs in
    float32 and casts the result back, and implements `compute_output_shape`
    and `get_config`. Subclasses write `__init__`, `build` (if they have
    weights) and `call`. A layer without weights is built when it is
    created, as Keras's own poolings are, so `stateless_call` works at once.

    Every pooling follows one policy for values it cannot pool normally. A
    NaN at a valid position propagates as in NumPy's `mean` and `max`: the
    channels that hold it give NaN (every channel, for attention); `inf`
    follows NumPy too. Masked positions never matter, whatever they hold. A
    spatial size of 0 in a symbolic shape (`keras.Input`,
    `compute_output_shape`) raises a `ValueError`; a sample with
    nothing to pool at run time, fully masked or of size 0, gives zeros; a
    batch of no sample gives a batch of no sample.

    It also refuses what would fail later or silently: a dtype policy that is
    not floating-point (integer inputs are cast instead), a mask whose shape
    is not the input's `(batch, *spatial)`, and a weights file whose values
    are not finite (`load_own_variables`; subclasses add their own rules in
    `_check_loaded_weight`). Once built, its `input_spec` holds the rank to
    3 to 5, and to the channel count for layers whose weights are sized by
    it.

    Args:
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        keepdims: bool. Keep the spatial axes with size 1. Defaults to
            `False`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Example:

    A global sum pooling, written with the helpers every subclass uses:

    >>> class GlobalSumPooling(kgp.BaseGlobalPooling):
    ...     def call(self, inputs, mask=None):
    ...         x, mask, axes = self._prepare(inputs, mask)
    ...         pooled = keras.ops.sum(x, axis=axes, keepdims=self.keepdims)
    ...         return self._finish(pooled)
    >>> x = np.ones((2, 4, 4, 3), "float32")
    >>> y = GlobalSumPooling()(x)
    >>> tuple(y.shape), keras.ops.convert_to_numpy(y)[0].tolist()
    ((2, 3), [16.0, 16.0, 16.0])
    >>> isinstance(kgp.GlobalAveragePooling(), kgp.BaseGlobalPooling)
    True
    """

    # How many output channels one input channel makes (timm's feat_mult).
    channel_multiplier = 1

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        self._check_dtype_policy()
        if data_format is None:
            data_format = keras.config.image_data_format()
        self.data_format = check_option("data_format", data_format, DATA_FORMATS)
        if keepdims not in (True, False):
            raise ValueError(
                f"`keepdims` must be a bool. Received: keepdims={keepdims!r}"
            )
        self.keepdims = bool(keepdims)
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(
            min_ndim=min(_RANKS), max_ndim=max(_RANKS)
        )
        # Keras's rule: a layer whose class keeps `Layer.build` has no
        # weights to make, so it is built now.
        if type(self).build is keras.layers.Layer.build:
            self._build_without_weights()

    @classmethod
    def _refuse_keepdims(cls, kwargs, output):
        """Raises if `kwargs` holds `keepdims`, for a layer that has none.

        Args:
            kwargs: the constructor's keyword arguments.
            output: string. What the layer outputs instead of one value per
                channel, such as `"one logit per class"`.
        """
        if "keepdims" in kwargs:
            raise ValueError(
                f"`{cls.__name__}` has no `keepdims`: its output is {output}. "
                f"Received: keepdims={kwargs['keepdims']!r}"
            )

    def _build_without_weights(self):
        """Marks the layer built, as Keras marks its own weightless layers."""
        self.built = True
        self._post_build()
        self._lock_state()

    # === Shapes ===

    def _check_rank(self, input_shape):
        if len(input_shape) not in _RANKS:
            raise ValueError(
                f"`{type(self).__name__}` expects an input of rank 3, 4 or 5 "
                "(a 1D, 2D or 3D feature map with batch and channel axes). "
                f"Received: input_shape={tuple(input_shape)}"
            )

    def _check_input_shape(self, input_shape):
        self._check_rank(input_shape)
        # A size unknown here and 0 at run time pools to zeros instead, as
        # does an eager call on an empty map.
        if 0 in tuple(
            input_shape[axis] for axis in self._spatial_axes(len(input_shape))
        ):
            raise ValueError(
                f"`{type(self).__name__}` cannot pool a feature map with no "
                "position: every spatial axis needs a size of at least 1 "
                f"(data_format={self.data_format!r}). "
                f"Received: input_shape={tuple(input_shape)}"
            )

    def _channel_axis(self, rank):
        return rank - 1 if self.data_format == "channels_last" else 1

    def _spatial_axes(self, rank):
        if self.data_format == "channels_last":
            return tuple(range(1, rank - 1))
        return tuple(range(2, rank))

    def _channels(self, input_shape):
        return input_shape[self._channel_axis(len(input_shape))]

    def _known_channels(self, input_shape):
        """The channel count, for layers whose weights are sized by it."""
        channels = self._channels(input_shape)
        if channels is None:
            raise ValueError(
                f"`{type(self).__name__}` needs a known number of channels to "
                f"build its weights (data_format={self.data_format!r}). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        return channels

    def _set_input_spec(self, channels):
        """Lets Keras refuse, with its own message, another channel count.

        Args:
            channels: the channel count the layer's weights are sized by.
        """
        axis = -1 if self.data_format == "channels_last" else 1
        self.input_spec = keras.layers.InputSpec(
            min_ndim=min(_RANKS), max_ndim=max(_RANKS), axes={axis: channels}
        )

    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        rank = len(input_shape)
        channels = self._channels(input_shape)
        if channels is not None:
            channels = channels * self.channel_multiplier
        if not self.keepdims:
            return (input_shape[0], channels)
        spatial = (1,) * (rank - 2)
        if self.data_format == "channels_last":
            return (input_shape[0],) + spatial + (channels,)
        return (input_shape[0], channels) + spatial

    def compute_output_spec(self, inputs, mask=None, **kwargs):
        # Symbolic calls take `compute_output_shape`, not `call`: check here too.
        if mask is not None:
            self._check_mask(inputs, mask)
        return super().compute_output_spec(inputs, mask=mask, **kwargs)

    def _scores_output_spec(self, inputs, mask, return_attention_scores, queries=()):
        """The output spec of a pooling that returns attention scores on request.

        Args:
            inputs: the symbolic input.
            mask: its mask, or None.
            return_attention_scores: bool. Whether the scores come too.
            queries: tuple of int. The scores' axes between the batch and the
                spatial axes, such as `(num_heads,)`.

        Returns:
            The pooled `KerasTensor`, or `(pooled, scores)` with the scores
            shaped `(batch, *queries, *spatial)`.
        """
        if mask is not None:
            self._check_mask(inputs, mask)
        pooled = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if not return_attention_scores:
            return pooled
        shape = tuple(inputs.shape)
        spatial = tuple(shape[axis] for axis in self._spatial_axes(len(shape)))
        scores_shape = (shape[0], *queries, *spatial)
        return pooled, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    # === Call helpers ===

    @property
    def reduction_dtype(self):
        """The dtype reductions run in: float32 for 16-bit compute dtypes."""
        dtype = keras.backend.standardize_dtype(self.compute_dtype)
        return "float32" if dtype in _LOW_PRECISION else dtype

    def _check_dtype_policy(self):
        """Refuses integer and boolean policies, which fail only when called."""
        dtypes = (self.compute_dtype, self.variable_dtype)
        if all(keras.backend.standardize_dtype(d) in _FLOATS for d in dtypes):
            return
        choices = "{" + ", ".join(repr(p) for p in _POLICIES) + "}"
        raise ValueError(
            f"`dtype` must be a floating-point dtype or policy, one of {choices}, "
            "or `None` for the global policy; integer inputs are cast to it. "
            f"Received: dtype={self.dtype_policy.name!r}"
        )

    def _check_mask(self, inputs, mask):
        """Refuses a mask that is not shaped `(batch, *spatial)` like `inputs`.

        A mask that merely broadcasts would change the output's shape, or
        fail inside the backend. Sizes unknown until run time are not
        compared.
        """
        input_shape = tuple(inputs.shape)
        mask_shape = tuple(mask.shape)
        spatial = self._spatial_axes(len(input_shape))
        expected = (input_shape[0], *(input_shape[axis] for axis in spatial))
        if len(mask_shape) == len(expected) and all(
            m is None or e is None or m == e
            for m, e in zip(mask_shape, expected, strict=True)
        ):
            return
        raise ValueError(
            f"`{type(self).__name__}` needs a `mask` of the input's shape "
            f"without its channel axis, (batch, *spatial) = {expected} "
            f"(data_format={self.data_format!r}). "
            f"Received: mask.shape={mask_shape}, inputs.shape={input_shape}"
        )

    def _prepare(self, inputs, mask):
        """Casts `inputs` for reduction and broadcasts `mask` against them.

        Returns:
            `(x, mask, axes)`: `x` in `reduction_dtype` with masked positions
            zeroed, the boolean mask with a channel axis of size 1 (or None),
            and the spatial axes.
        """
        if mask is not None:
            self._check_mask(inputs, mask)
        x = _cast(inputs, self.reduction_dtype)
        rank = len(x.shape)
        axes = self._spatial_axes(rank)
        if mask is not None:
            mask = ops.expand_dims(ops.cast(mask, "bool"), self._channel_axis(rank))
            x = ops.where(mask, x, ops.zeros_like(x))
        return x, mask, axes

    def _finish(self, outputs):
        return _cast(outputs, self.compute_dtype)

    # === Loading ===

    def load_own_variables(self, store):
        # Keras assigns whatever the file holds, and a NaN, an inf or (for
        # GeM's p) a negative value would poison every output silently. The
        # values are checked before any is assigned, so a refused file leaves
        # the layer as it was; a missing or misshapen one is Keras's to refuse.
        keys = set(store.keys())
        for index, variable in enumerate(self.weights):
            if str(index) in keys:
                value = np.asarray(store[str(index)])  # host data, not layer math
                self._check_loaded_weight(variable.name, value)
        super().load_own_variables(store)

    def _check_loaded_weight(self, name, value):
        """Raises unless `value` may be loaded into the weight `name`.

        Args:
            name: string. The weight's name.
            value: NumPy array read from the file.
        """
        if not np.all(np.isfinite(value)):
            self._refuse_weight(name, value, "finite")

    def _refuse_weight(self, name, value, rule):
        shown = value.item() if value.size == 1 else value
        raise ValueError(
            f"Layer '{self.name}' ({type(self).__name__}) cannot load its "
            f"weights: `{name}` must be {rule}. Received: {name}={shown}"
        )

    def get_config(self):
        config = super().get_config()
        config.update({"data_format": self.data_format, "keepdims": self.keepdims})
        return config
