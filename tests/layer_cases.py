"""What the layer tests share: the layers, inputs, and the NumPy oracle call."""

import math
import weakref

import keras
import numpy as np
import pytest
from keras import ops

import keras_globalpool as kgp
from keras_globalpool import reference

# name -> constructor arguments of each layer under test; "mixed" appears once
# per mode because each mode is a different computation.
LAYER_CASES = {
    "avg": ("avg", {}),
    "max": ("max", {}),
    "mixed": ("mixed", {"mode": "concat"}),
    "mixed_mean": ("mixed", {"mode": "mean"}),
    "mixed_learned": ("mixed", {"mode": "learned"}),
    "attention": ("attention", {"reduction": 2}),
    "attention_softmax": ("attention", {"reduction": 2, "normalize": "softmax"}),
    "gem": ("gem", {"p": 3.0}),
    "lse": ("lse", {"r": 10.0}),
    "gated_attention": ("gated_attention", {"units": 3}),
    "gated_attention_ungated": ("gated_attention", {"units": 3, "gated": False}),
    "map": ("map", {"num_heads": 2, "latent_len": 2, "mlp_ratio": 1.0}),
    "covariance": ("covariance", {"dim": 3}),
    "simpool": ("simpool", {}),
    "simpool_gamma": (
        "simpool",
        {"num_heads": 2, "gamma": 2.0, "qkv_bias": True, "qk_norm": True},
    ),
    # Two heads: one of softmax temperature 1, one of max.
    "csra": ("csra", {"num_classes": 3, "num_heads": 2, "lam": 0.5}),
}
TRAINABLE_WEIGHTS = {
    "mixed_learned": 1,
    "attention": 4,
    "attention_softmax": 4,
    "gem": 1,
    "lse": 1,
    "gated_attention": 5,
    "gated_attention_ungated": 3,
    "map": 15,
    "covariance": 2,
    "simpool": 4,
    "simpool_gamma": 10,
    "csra": 1,
}
# The cases that return attention scores on request, and whose weights are
# shared by every channel (by every channel of a head, for "map" and
# "simpool"); see `query_axes` for their layout.
ATTENTION_CASES = (
    "attention",
    "attention_softmax",
    "gated_attention",
    "gated_attention_ungated",
    "map",
    "simpool",
    "simpool_gamma",
)
# The cases whose output is not one value per channel: they have no
# `keepdims` (see `keepdims_kwargs`), `pooled_size` gives their output size,
# and a NaN at a valid position makes their whole sample NaN.
NOT_PER_CHANNEL = ("covariance", "csra")
RANKS = (3, 4, 5)
DATA_FORMATS = ("channels_last", "channels_first")
SPATIAL = {3: (6,), 4: (5, 4), 5: (3, 4, 2)}


def keepdims_kwargs(case, keepdims):
    """`{"keepdims": keepdims}` for a case's constructor, or `{}`.

    A case in `NOT_PER_CHANNEL` takes no `keepdims`: a test of
    `keepdims=True` skips it, saying so.
    """
    if case not in NOT_PER_CHANNEL:
        return {"keepdims": keepdims}
    if keepdims:
        pytest.skip(f"{case!r} has no keepdims: its output is not per channel")
    return {}


def pooled_size(case, channels):
    """The number of values `case` pools a map of `channels` channels to."""
    name, kwargs = LAYER_CASES[case]
    if name == "covariance":
        dim = kwargs.get("dim", 256) or channels
        return dim * (dim + 1) // 2
    if name == "csra":
        return kwargs["num_classes"]
    return 2 * channels if case == "mixed" else channels


def make_layer(case, **kwargs):
    """A fresh layer for `case`, with extra constructor arguments."""
    name, case_kwargs = LAYER_CASES[case]
    return kgp.get(name, **case_kwargs, **kwargs)


# What a registry pooling needs beyond its defaults to take any channel count:
# multi-head attention's channels must be a multiple of `num_heads` (8, timm's),
# and CSRA needs its number of classes.
ANY_CHANNELS = {"map": {"num_heads": 1}, "csra": {"num_classes": 3}}


def make_pooling(pooling, **kwargs):
    """The registry's `pooling` with its defaults, for any channel count."""
    return kgp.get(pooling, **ANY_CHANNELS.get(pooling, {}), **kwargs)


def input_shape(rank, data_format, batch=2, channels=4, spatial=None):
    """The input shape of a map of `rank` in `data_format`."""
    spatial = SPATIAL[rank] if spatial is None else spatial
    if data_format == "channels_last":
        return (batch, *spatial, channels)
    return (batch, channels, *spatial)


def random_input(shape, seed=0, dtype="float64"):
    """Positive and negative values with no exact ties."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(dtype)


def randomize_weights(layer, seed=1):
    """Moves a built layer's weights off their initial values, so tests see them."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = np.asarray(weight.numpy())
        if weight.name == "gate":
            new = rng.uniform(0.1, 0.9, size=value.shape)
        elif weight.name == "p":
            new = np.asarray(2.5)
        elif weight.name == "r":  # positive, as training keeps it
            new = np.asarray(rng.uniform(0.5, 5.0))
        else:
            new = rng.normal(scale=0.5, size=value.shape)
        weight.assign(new.astype(value.dtype))


# Per layer, its compiled calls on jax, by the call's keyword arguments.
_COMPILED = weakref.WeakKeyDictionary()


def call(layer, x, mask=None, **kwargs):
    """`layer(x, mask=mask, **kwargs)`; on jax, compiled with `jax.jit`.

    jax compiles each operation of an eager call for every new shape, so an
    eager call of an attention layer on a new shape costs seconds; the
    compiled call costs a tenth of that, and is what jax's `fit` and
    `predict` run. The property-based tests, which draw a new shape for
    almost every example, call the layers through this; the eager path on
    jax is tested by `test_layers_correctness` and the Keras harness.
    """
    if keras.backend.backend() != "jax":
        return layer(x, mask=mask, **kwargs)
    import jax

    compiled = _COMPILED.setdefault(layer, {})
    key = tuple(sorted(kwargs.items()))
    if key not in compiled:
        owner = weakref.ref(layer)  # a strong one would keep the layer alive

        def stateless(values, x, mask):
            mapping = zip(owner().variables, values, strict=True)
            with keras.StatelessScope(state_mapping=mapping):
                return owner()(x, mask=mask, **kwargs)

        compiled[key] = jax.jit(stateless)
    return compiled[key]([v.value for v in layer.variables], x, mask)


def reference_forward(layer, x, mask=None):
    """The NumPy oracle's output for `layer`, using the layer's own weights."""
    if isinstance(layer, kgp.GlobalCovariancePooling):
        weights = {}
        if layer.dim is not None:
            weights = {"kernel": layer.kernel.numpy(), "bias": layer.bias.numpy()}
        return reference.covariance_pool(
            x,
            **weights,
            iterations=layer.iterations,
            data_format=layer.data_format,
            mask=mask,
        )
    if isinstance(layer, kgp.ClassSpecificResidualAttention):
        return reference.csra(
            x,
            to_numpy(layer.kernel, "float64"),
            layer.temperatures,
            layer.lam,
            data_format=layer.data_format,
            mask=mask,
        )
    common = {
        "data_format": layer.data_format,
        "keepdims": layer.keepdims,
        "mask": mask,
    }
    if isinstance(layer, kgp.GlobalAveragePooling):
        return reference.avg_pool(x, **common)
    if isinstance(layer, kgp.GlobalMaxPooling):
        return reference.max_pool(x, **common)
    if isinstance(layer, kgp.GlobalMixedPooling):
        gate = layer.gate.numpy() if layer.mode == "learned" else None
        return reference.mixed_pool(x, mode=layer.mode, gate=gate, **common)
    if isinstance(layer, kgp.GlobalGeMPooling):
        p = float(layer.p_weight.numpy())
        return reference.gem_pool(x, p=p, eps=layer.eps, **common)
    if isinstance(layer, kgp.GlobalLSEPooling):
        return reference.lse_pool(x, r=float(layer.r_weight.numpy()), **common)
    attention = (
        kgp.GlobalAttentionPooling,
        kgp.GlobalGatedAttentionPooling,
        kgp.GlobalMultiHeadAttentionPooling,
        kgp.GlobalSimPooling,
    )
    if isinstance(layer, attention):
        return reference_attention(layer, x, mask)[0]
    raise TypeError(f"No reference for {type(layer).__name__}")


def reference_attention(layer, x, mask=None):
    """The oracle's `(pooled, scores)` for an attention layer, in float64."""
    common = {
        "data_format": layer.data_format,
        "keepdims": layer.keepdims,
        "mask": mask,
    }

    def weight(variable):
        return np.asarray(ops.convert_to_numpy(variable), np.float64)

    if isinstance(layer, kgp.GlobalMultiHeadAttentionPooling):
        weights = {variable.name: weight(variable) for variable in layer.weights}
        return reference.multi_head_attention_pool(
            x, num_heads=layer.num_heads, **weights, **common
        )
    if isinstance(layer, kgp.GlobalSimPooling):
        return reference.sim_pool(x, **sim_pool_arguments(layer), **common)
    if isinstance(layer, kgp.GlobalGatedAttentionPooling):
        gate = {}
        if layer.gated:
            gate = {
                "gate_kernel": weight(layer.gate_kernel),
                "gate_bias": weight(layer.gate_bias),
            }
        return reference.gated_attention_pool(
            x,
            weight(layer.hidden_kernel),
            weight(layer.hidden_bias),
            weight(layer.score_kernel),
            **gate,
            **common,
        )
    return reference.attention_pool(
        x,
        weight(layer.hidden_kernel),
        weight(layer.hidden_bias),
        weight(layer.score_kernel),
        weight(layer.score_bias),
        normalize=layer.normalize,
        **common,
    )


def sim_pool_arguments(layer):
    """`reference.sim_pool`'s arguments for `layer`, besides `x` and its layout:
    its weights (float64) and hyperparameters."""
    weights = {
        w.name: np.asarray(ops.convert_to_numpy(w), np.float64) for w in layer.weights
    }
    return {
        **weights,
        "num_heads": layer.num_heads,
        "gamma": layer.gamma,
        "epsilon": layer.layer_norm_epsilon,
    }


def layer_norm(x, gamma=1.0, beta=0.0, epsilon=1e-5):
    """`x` layer-normalized over its last axis in float64, as torch's
    `nn.LayerNorm` computes it (the biased variance)."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = np.mean(centred**2, axis=-1, keepdims=True)
    return centred / np.sqrt(variance + epsilon) * gamma + beta


def sim_pool_values(layer, x):
    """The values a SimPool `layer` pools, channels last: `x` normalized with
    its layer norm's weights."""
    if layer.data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    weights = (
        to_numpy(layer.norm_gamma, "float64"),
        to_numpy(layer.norm_beta, "float64"),
    )
    return layer_norm(x, *weights, layer.layer_norm_epsilon)


def query_axes(layer):
    """The sizes attention scores have between the batch and spatial axes.

    `(num_heads, latent_len)` for multi-head attention pooling, whose scores
    are `(batch, num_heads, latent_len, *spatial)` as in Keras's
    `MultiHeadAttention`; `(num_heads,)` for SimPool, whose one query per
    head has no axis; none for the poolings with one query.
    """
    if isinstance(layer, kgp.GlobalMultiHeadAttentionPooling):
        return (layer.num_heads, layer.latent_len)
    if isinstance(layer, kgp.GlobalSimPooling):
        return (layer.num_heads,)
    return ()


def scores_per_query(layer, scores):
    """Attention scores of a non-empty batch as `(batch, queries, positions)`."""
    scores = np.asarray(scores)
    return scores.reshape(scores.shape[0], math.prod(query_axes(layer)), -1)


def to_numpy(tensor, dtype=None):
    """A layer output as a NumPy array, on any backend.

    `np.asarray` fails on torch tensors that require a gradient and on
    bfloat16 ones; `dtype` casts first.
    """
    if dtype is None and keras.backend.standardize_dtype(tensor.dtype) == "bfloat16":
        dtype = "float32"
    if dtype is not None:
        tensor = ops.cast(tensor, dtype)
    return np.asarray(ops.convert_to_numpy(tensor))


def gradients(layer, x, dy, mask=None):
    """Gradients of `sum(layer(x, mask=mask) * dy)` on any Keras backend.

    Returns a list of NumPy arrays: the gradient with respect to `x`, then
    one per trainable weight of `layer` (which may be a model). The loss is
    summed in float64 for a float64 `x`, else in float32.
    """
    x = np.asarray(x)
    dy = np.asarray(dy)
    loss_dtype = "float64" if x.dtype == np.float64 else "float32"
    if not layer.built:
        layer(x, mask=mask)

    def loss(outputs):
        return ops.sum(ops.cast(outputs, loss_dtype) * ops.cast(dy, loss_dtype))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            value = loss(layer(xt, mask=mask))
        weights = [w.value for w in layer.trainable_weights]
        grads = tape.gradient(value, [xt, *weights])
    elif backend == "jax":
        import jax

        trainable = [w.value for w in layer.trainable_variables]
        non_trainable = [w.value for w in layer.non_trainable_variables]

        def jax_loss(xv, tv):
            outputs, _ = layer.stateless_call(tv, non_trainable, xv, mask=mask)
            return loss(outputs)

        # Compiled: an eager gradient compiles each operation for each shape.
        grad = jax.jit(jax.grad(jax_loss, argnums=(0, 1)))
        dx, dw = grad(jax.numpy.asarray(x), trainable)
        grads = [dx, *dw]
    elif backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        weights = [w.value for w in layer.trainable_weights]
        grads = torch.autograd.grad(
            loss(layer(xt, mask=mask)), [xt, *weights], allow_unused=True
        )
    else:
        raise NotImplementedError(f"No gradients for backend={backend!r}")
    sources = [x, *layer.trainable_weights]
    return [
        np.zeros(np.shape(source)) if g is None else ops.convert_to_numpy(g)
        for source, g in zip(sources, grads, strict=True)
    ]


def token_ids(steps, seed=0):
    """Ids of shape (4, steps) in a vocabulary of 100, 0 for padding: row 1
    partly padded, row 2 fully padded."""
    ids = np.random.default_rng(seed).integers(1, 100, (4, steps))
    ids[1, steps // 2 :] = 0
    ids[2] = 0
    return ids.astype("int32")


def token_model(pooling):
    """`Input -> Embedding(100, 16, mask_zero=True) -> pooling -> Dense(3)`."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(100, 16, mask_zero=True)(inputs)
    x = make_pooling(pooling)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)
