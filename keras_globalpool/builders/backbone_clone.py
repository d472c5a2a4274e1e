"""`clone_backbone`: a backbone's copy, with the layers fine-tuning and serving need."""

import keras

from keras_globalpool.layers.frozen_batch_norm import FrozenBatchNormalization


def is_graph_model(model):
    """Whether Keras can clone `model` layer by layer: Functional or Sequential."""
    return isinstance(model, (keras.Function, keras.Sequential))


def graph_leaves(model):
    """The layers of `model`, those of its nested graph models in their place.

    Args:
        model: a Functional or Sequential `keras.Model`.

    Returns:
        A list of layers in the model's order; a nested Functional or
        Sequential model is replaced by its own leaves, while a subclassed
        model or a custom layer is one leaf.
    """
    leaves = []
    for layer in model.layers:
        leaves.extend(graph_leaves(layer) if is_graph_model(layer) else [layer])
    return leaves


def _copy(layer):
    # Functional models also hold bare `keras.ops` operations, without weights.
    weights = layer.get_weights() if isinstance(layer, keras.layers.Layer) else []
    return layer.__class__.from_config(layer.get_config()), weights


def _frozen_batch_norm(layer):
    config = layer.get_config()
    return FrozenBatchNormalization.from_config(config), layer.get_weights()


def _depthwise_if_one_group_per_channel(layer):
    # Keras wraps grouped convolutions in an XLA-must-compile function on the
    # TensorFlow backend, which a SavedModel keeps: TF Serving then fails on
    # CPU unless XLA is enabled. With one input channel per group (ConvNeXt),
    # the same computation is a DepthwiseConv2D, which needs no XLA.
    config = layer.get_config()
    if config["groups"] == 1 or layer.kernel.shape[-2] != 1:
        return _copy(layer)
    channels = config["groups"]
    depthwise = keras.layers.DepthwiseConv2D(
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        depth_multiplier=config["filters"] // channels,
        data_format=config["data_format"],
        dilation_rate=config["dilation_rate"],
        activation=config["activation"],
        use_bias=config["use_bias"],
        depthwise_initializer=config["kernel_initializer"],
        bias_initializer=config["bias_initializer"],
        depthwise_regularizer=config["kernel_regularizer"],
        bias_regularizer=config["bias_regularizer"],
        activity_regularizer=config["activity_regularizer"],
        depthwise_constraint=config["kernel_constraint"],
        bias_constraint=config["bias_constraint"],
        trainable=config["trainable"],
        dtype=config["dtype"],
        name=config["name"],
    )
    # Output channel c * multiplier + m reads input channel c in both layers:
    # (h, w, 1, channels * multiplier) becomes (h, w, channels, multiplier).
    kernel, *bias = layer.get_weights()
    kernel = kernel.reshape(*kernel.shape[:2], channels, -1)
    return depthwise, [kernel, *bias]


# How each layer type is replaced; any other layer is copied as it is.
REPLACEMENTS = {
    keras.layers.BatchNormalization: _frozen_batch_norm,
    keras.layers.Conv2D: _depthwise_if_one_group_per_channel,
}


def _with_weights(clone, layer, weights):
    if weights:
        clone.build_from_config(layer.get_build_config())
        clone.set_weights(weights)
    return clone


def _copy_or_share(layer):
    try:
        clone, weights = _copy(layer)
        return _with_weights(clone, layer, weights)
    except Exception:
        # Not every layer survives its config: a Lambda refuses it under
        # safe mode, a custom layer's __init__ may not take it, or a layer
        # builds its sublayers only when called. The layer itself, shared
        # with the user's model, computes the same.
        return layer


def _clone_layer(layer, replacements):
    replace = replacements.get(type(layer))
    if replace is None:
        return _copy_or_share(layer)
    clone, weights = replace(layer)
    return _with_weights(clone, layer, weights)


def _unfrozen_batch_norm(model):
    """The first BatchNorm no clone replaced, and the leaf that holds it."""
    for leaf in graph_leaves(model):
        for layer in leaf._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization) and not isinstance(
                layer, FrozenBatchNormalization
            ):
                return layer, leaf
    return None, None


def _check_batch_norm_frozen(model):
    layer, leaf = _unfrozen_batch_norm(model)
    if layer is None:
        return
    if layer is leaf:
        why = (
            f"it is a {type(layer).__name__}, a BatchNormalization subclass the "
            "builders do not replace. Use keras.layers.BatchNormalization or "
            "kgp.FrozenBatchNormalization"
        )
    else:
        why = (
            f"it is inside {leaf.name!r}, a {type(leaf).__name__}: a subclassed "
            "model or a custom layer, which Keras cannot clone layer by layer. "
            "Build the backbone as a Functional or Sequential model, or use "
            "kgp.FrozenBatchNormalization inside it"
        )
    raise ValueError(
        "`freeze_batch_norm=True` cannot replace the BatchNormalization layer "
        f"{layer.name!r} of the backbone by kgp.FrozenBatchNormalization: {why}; "
        "or pass freeze_batch_norm=False to train it as it is. "
        "Received: freeze_batch_norm=True"
    )


def clone_backbone(model, freeze_batch_norm=True):
    """Copies `model` and its weights, with frozen BatchNorm and no forced XLA.

    With `freeze_batch_norm`, every `keras.layers.BatchNormalization`, in
    nested Functional and Sequential models too, becomes a
    `FrozenBatchNormalization`, so fine-tuning never touches the moving
    statistics. Every `Conv2D` with one group per input channel (ConvNeXt's
    depthwise convolutions) becomes the equivalent `DepthwiseConv2D`, so an
    export runs in TF Serving without XLA. Other layers are copied from
    their config; a layer that cannot be (a `Lambda`, a custom layer whose
    `from_config` fails) is shared with `model`: one set of weights, one
    `trainable` flag.

    Args:
        model: a Functional or Sequential `keras.Model`.
        freeze_batch_norm: bool. Replace BatchNorm by the frozen kind.
            Defaults to `True`.

    Returns:
        A new `keras.Model` computing what `model` computes; with
        `freeze_batch_norm`, its BatchNorm layers normalize with their moving
        statistics whatever `training` it is called with.

    Raises:
        ValueError: with `freeze_batch_norm`, for a BatchNorm that no copy
            can replace: inside a subclassed model or a custom layer, or of
            a subclass of `BatchNormalization`.
    """
    replacements = dict(REPLACEMENTS)
    if not freeze_batch_norm:
        del replacements[keras.layers.BatchNormalization]
    clone = keras.models.clone_model(
        model,
        clone_function=lambda layer: _clone_layer(layer, replacements),
        recursive=True,
    )
    if freeze_batch_norm:
        _check_batch_norm_frozen(clone)
    return clone
