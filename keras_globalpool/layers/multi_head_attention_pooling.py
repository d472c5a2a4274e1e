"""`GlobalMultiHeadAttentionPooling`: attention pooling with learned queries."""

import math

import keras
from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.arguments import check_bool, check_positive_int, check_rate
from keras_globalpool.layers.base_kernel_pooling import BaseKernelPooling

# timm's ViT (and so SigLIP's head) builds its norms with this epsilon.
LAYER_NORM_EPSILON = 1e-6


def _check_mlp_ratio(value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            "`mlp_ratio` must be a finite number >= 0 (0 turns the MLP off). "
            f"Received: mlp_ratio={value!r}"
        )
    return float(value)


def _two_last_axes(x):
    """`x[..., None, None]`, as LiteRT's builtin ops can express it.

    Indexing with `None` converts to a `StridedSlice` that adds axes, which
    LiteRT's builtin `StridedSlice` does not take; `expand_dims` converts to
    a builtin `ExpandDims`.
    """
    return ops.expand_dims(ops.expand_dims(x, -1), -1)


def _gelu(x):
    # From `erf`: Keras's TensorFlow `gelu` is off by 1e-9 in float64.
    return 0.5 * x * (1.0 + ops.erf(x / math.sqrt(2.0)))


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalMultiHeadAttentionPooling(BaseKernelPooling):
    """Multi-head attention pooling with learned latent queries (MAP).

    The head of SigLIP (Zhai et al., "Sigmoid Loss for Language Image
    Pre-Training", 2023, after "Scaling Vision Transformers", 2022) and of
    timm's `AttentionPoolLatent`, the pooling by multi-head attention (PMA)
    of Lee et al.'s Set Transformer (2019). `latent_len` learned queries
    attend, with `num_heads` heads, over the positions: each head projects
    the tokens to keys and values of `channels // num_heads` features, and
    each query takes the softmax-weighted sum of the values. The heads are
    concatenated and projected, a residual MLP (LayerNorm, Dense to
    `int(channels * mlp_ratio)`, exact GELU, Dense) is added, and the
    queries' outputs are averaged (timm's `pool_type="avg"`). Use it to pool
    ViT-style token sequences `(batch, tokens, channels)`, padded ones with a
    mask; 2D and 3D maps are pooled over their flattened positions. Unlike
    the other poolings it mixes the channels, and its output is not bounded
    by the input's values. The layer norms, softmax and sums run in float32
    under mixed precision.

    Args:
        num_heads: int >= 1 that divides the channel count. Defaults to `8`.
        latent_len: int >= 1. The number of learned queries. Defaults to `1`.
        mlp_ratio: float >= 0. The MLP's hidden size over the channels; `0`
            (or a hidden size that rounds down to 0) leaves it out. Defaults
            to `4.0`.
        qkv_bias: bool. Biases in the query, key and value projections.
            Defaults to `True`.
        qk_norm: bool. Layer-normalize each head's queries and keys.
            Defaults to `False`.
        dropout: float in [0, 1). Dropout after the output projection, in
            training only. Defaults to `0.0`.
        kernel_initializer: initializer for the kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer for the biases. Defaults to `"zeros"`.
        kernel_regularizer: optional regularizer for the kernels.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        keepdims: bool. Keep the spatial axes with size 1. Defaults to
            `False`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    The latent queries start from a normal distribution truncated at two
    standard deviations of `channels ** -0.5`, as in timm; the layer norms
    (epsilon `1e-6`, timm's ViT) start at `gamma = 1`, `beta = 0`.

    Call arguments:
        inputs: a tensor of rank 3, 4 or 5.
        mask: optional boolean tensor of shape `(batch, *spatial)`; masked
            positions take no part, and a fully masked sample gives zeros.
        training: bool. Whether dropout applies.
        return_attention_scores: bool. Also return the attention weights,
            of shape `(batch, num_heads, latent_len, *spatial)`, summing to
            1 over the valid positions. Defaults to `False`.

    Input shape:
        `(batch, *spatial, channels)` with `"channels_last"`,
        `(batch, channels, *spatial)` with `"channels_first"`.

    Output shape:
        `(batch, channels)`; with `keepdims=True`, the input shape with
        every spatial axis of size 1. With `return_attention_scores=True`,
        a tuple `(pooled, scores)`.

    Example:

    >>> tokens = np.random.rand(2, 10, 32).astype("float32")
    >>> mask = np.arange(10) < np.array([[10], [6]])
    >>> pooled, scores = kgp.GlobalMultiHeadAttentionPooling(
    ...     num_heads=4, latent_len=2)(tokens, mask=mask,
    ...     return_attention_scores=True)
    >>> tuple(pooled.shape), tuple(scores.shape)
    ((2, 32), (2, 4, 2, 10))
    >>> keras.ops.convert_to_numpy(scores)[1, 0, 0, 6:].tolist()
    [0.0, 0.0, 0.0, 0.0]
    """

    # Without qk_norm the keys are never formed (each query is folded into
    # the key kernel), and on maps of at most `SUM_BLOCK` positions neither
    # are the values (the map is pooled first, then projected): with the
    # projections of every position, a ResNet50 head took 15% of the
    # backbone's time on an AVX2 CPU, folded 7%. The plain path, taken with
    # qk_norm, is kept beside it: tests set this to False and compare the two.
    fold_projections = True

    def __init__(
        self,
        num_heads=8,
        latent_len=1,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_norm=False,
        dropout=0.0,
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
        self.latent_len = check_positive_int("latent_len", latent_len)
        self.mlp_ratio = _check_mlp_ratio(mlp_ratio)
        self.qkv_bias = check_bool("qkv_bias", qkv_bias)
        self.qk_norm = check_bool("qk_norm", qk_norm)
        self.dropout = float(check_rate("dropout", dropout))
        if self.dropout > 0:
            self.seed_generator = keras.random.SeedGenerator()

    # === Weights ===

    def _weight(self, name, shape, initializer):
        # Not autocast: the layer computes in `reduction_dtype`.
        return self.add_weight(
            name=name, shape=shape, initializer=initializer, autocast=False
        )

    def _dense(self, name, units_in, units_out, bias=True):
        kernel = self._kernel(f"{name}_kernel", (units_in, units_out))
        if bias:
            self._bias(f"{name}_bias", (units_out,))
        return kernel

    def _norm(self, name, size):
        self._weight(f"{name}_gamma", (size,), "ones")
        self._weight(f"{name}_beta", (size,), "zeros")

    def build(self, input_shape):
        self._check_rank(input_shape)
        channels = self._known_channels(input_shape)
        if channels % self.num_heads:
            raise ValueError(
                f"`{type(self).__name__}` needs a channel count divisible by "
                f"`num_heads`. Received: channels={channels}, "
                f"num_heads={self.num_heads}"
            )
        self._set_input_spec(channels)
        self.head_dim = channels // self.num_heads
        self.mlp_units = int(channels * self.mlp_ratio)
        self._weight(
            "latent",
            (self.latent_len, channels),
            keras.initializers.TruncatedNormal(stddev=channels**-0.5),
        )
        for name in ("query", "key", "value"):
            self._dense(name, channels, channels, bias=self.qkv_bias)
        if self.qk_norm:
            self._norm("query_norm", self.head_dim)
            self._norm("key_norm", self.head_dim)
        self._dense("output", channels, channels)
        if self.mlp_units:
            self._norm("mlp_norm", channels)
            self._dense("mlp_hidden", channels, self.mlp_units)
            self._dense("mlp_output", self.mlp_units, channels)

    # === Call ===

    def _heads(self, projected):
        """`(..., channels)` -> `(..., num_heads, head_dim)`."""
        return ops.reshape(
            projected, (*projected.shape[:-1], self.num_heads, self.head_dim)
        )

    def _project_tokens(self, features, w, name):
        """Keys or values, `(batch, *positions, num_heads, head_dim)`."""
        positions = "bxyz"[: len(features.shape) - 1]
        # `einsum`, not `matmul`: see `GlobalAttentionPooling._logits`.
        kernel = self._heads(w[f"{name}_kernel"])
        out = ops.einsum(f"{positions}c,chd->{positions}hd", features, kernel)
        if self.qkv_bias:
            out = out + self._heads(w[f"{name}_bias"])
        return out

    def _norm_heads(self, x, w, name):
        if not self.qk_norm:
            return x
        gamma, beta = w[f"{name}_gamma"], w[f"{name}_beta"]
        return pool_ops.layer_norm(x, gamma, beta, LAYER_NORM_EPSILON)

    def _attention(self, features, mask, w):
        """The weights `(batch, *positions, num_heads, latent_len)` and the
        attended values `(batch, num_heads, latent_len, head_dim)`."""
        rank = len(features.shape)
        axes = tuple(range(1, rank - 1))
        queries = ops.einsum("lc,co->lo", w["latent"], w["query_kernel"])
        if self.qkv_bias:
            queries = queries + w["query_bias"]
        queries = self._norm_heads(self._heads(queries), w, "query_norm")
        queries = queries * self.head_dim**-0.5
        positions = "bxyz"[: rank - 1]
        if self.fold_projections and not self.qk_norm:
            logits = self._folded_logits(features, queries, w, positions)
        else:
            keys = self._project_tokens(features, w, "key")
            keys = self._norm_heads(keys, w, "key_norm")
            logits = ops.einsum(f"{positions}hd,lhd->{positions}hl", keys, queries)
        # As `GlobalAttentionPooling._logits`: finite inputs give finite
        # weights, and a NaN at a valid position makes its sample NaN.
        has_nan = _two_last_axes(ops.any(ops.isnan(features), axis=-1))
        logits = ops.where(has_nan, float("nan"), ops.nan_to_num(logits, nan=0.0))
        if mask is not None:
            mask = _two_last_axes(mask)
        weights = pool_ops.normalize_scores(logits, axes, mask, "softmax")
        sizes = [features.shape[axis] for axis in axes]
        short = None not in sizes and math.prod(sizes) <= pool_ops.SUM_BLOCK
        if self.fold_projections and short:
            return weights, self._folded_values(features, weights, w, positions)
        values = self._project_tokens(features, w, "value")
        # The weighted sum over positions is blocked, as in every pooling.
        terms = ops.expand_dims(weights, -1) * ops.expand_dims(values, -2)
        return weights, pool_ops.blocked_sum(terms, axes)

    def _folded_logits(self, features, queries, w, positions):
        """The logits without forming the keys: each query folded into the
        key kernel, `q . (x W_k + b_k) = x . (W_k q) + b_k . q`. The last
        term, the same at every position, the softmax cancels; it is added
        as `pool_ops.softmax_cancelled` zeros, so that the key bias gets its
        gradient (0 but for roundoff), as `pool_ops.global_sim_pool` does."""
        kernel = self._heads(w["key_kernel"])
        folded = ops.einsum("chd,lhd->chl", kernel, queries)
        logits = ops.einsum(f"{positions}c,chl->{positions}hl", features, folded)
        if not self.qkv_bias:
            return logits
        offset = ops.einsum("hd,lhd->hl", self._heads(w["key_bias"]), queries)
        return logits + pool_ops.softmax_cancelled(offset)

    def _folded_values(self, features, weights, w, positions):
        """The attended values without forming the values: the map pooled
        with each head's weights, then projected. One reduction over at
        most `SUM_BLOCK` positions, as `blocked_sum` takes it."""
        pooled = ops.einsum(f"{positions}hl,{positions}c->bhlc", weights, features)
        attended = ops.einsum("bhlc,chd->bhld", pooled, self._heads(w["value_kernel"]))
        if not self.qkv_bias:
            return attended
        # Each value's bias, times the weights' sum: 1, or 0 where nothing
        # is valid.
        total = pool_ops.blocked_sum(weights, tuple(range(1, len(positions))))
        bias = ops.expand_dims(self._heads(w["value_bias"]), 1)
        return attended + ops.expand_dims(total, -1) * bias

    def call(self, inputs, mask=None, training=None, return_attention_scores=False):
        x, mask, axes = self._prepare(inputs, mask)
        rank = len(x.shape)
        channel_axis = self._channel_axis(rank)
        features = ops.moveaxis(x, channel_axis, -1)
        positions_mask = None if mask is None else ops.squeeze(mask, channel_axis)
        w = {variable.name: ops.cast(variable, x.dtype) for variable in self.weights}
        weights, attended = self._attention(features, positions_mask, w)
        output_kernel = ops.reshape(
            w["output_kernel"], (self.num_heads, self.head_dim, -1)
        )
        out = ops.einsum("bhld,hdo->blo", attended, output_kernel)
        out = out + w["output_bias"]
        if training and self.dropout > 0:
            out = keras.random.dropout(out, self.dropout, seed=self.seed_generator)
        if self.mlp_units:
            hidden = pool_ops.layer_norm(
                out, w["mlp_norm_gamma"], w["mlp_norm_beta"], LAYER_NORM_EPSILON
            )
            hidden = ops.einsum("blc,cu->blu", hidden, w["mlp_hidden_kernel"])
            hidden = _gelu(hidden + w["mlp_hidden_bias"])
            hidden = ops.einsum("blu,uc->blc", hidden, w["mlp_output_kernel"])
            out = out + hidden + w["mlp_output_bias"]
        pooled = ops.sum(out, axis=1) / self.latent_len
        # Zeros where nothing is valid: fully masked, or of size 0.
        count = pool_ops.count_valid(x, axes, mask)
        pooled = ops.where(count > 0, pooled, ops.zeros_like(pooled))
        if self.keepdims:
            for axis in axes:
                pooled = ops.expand_dims(pooled, axis)
        pooled = self._finish(pooled)
        if not return_attention_scores:
            return pooled
        order = (0, rank - 1, rank, *range(1, rank - 1))
        return pooled, self._finish(ops.transpose(weights, order))

    # === Shapes and config ===

    def compute_output_spec(
        self, inputs, mask=None, training=None, return_attention_scores=False
    ):
        queries = (self.num_heads, self.latent_len)
        return self._scores_output_spec(
            inputs, mask, return_attention_scores, queries=queries
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "latent_len": self.latent_len,
                "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias,
                "qk_norm": self.qk_norm,
                "dropout": self.dropout,
            }
        )
        return config
