"""`clone_backbone`: a backbone's copy, with the layers fine-tuning and serving need."""

import keras

from keras_globalpool.builders.frozen_batch_norm import FrozenBatchNormalization


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


# How each layer type is copied; any other layer is copied as it is.
REPLACEMENTS = {
    keras.layers.BatchNormalization: _frozen_batch_norm,
    keras.layers.Conv2D: _depthwise_if_one_group_per_channel,
}


def _clone_layer(layer, replacements):
    clone, weights = replacements.get(type(layer), _copy)(layer)
    if weights:
        clone.build_from_config(layer.get_build_config())
        clone.set_weights(weights)
    return clone


def clone_backbone(model, freeze_batch_norm=True):
    """Copies `model` and its weights, with frozen BatchNorm and no forced XLA.

    With `freeze_batch_norm`, every `keras.layers.BatchNormalization`, in
    nested models too, becomes a `FrozenBatchNormalization`, so fine-tuning
    never touches the moving statistics. Every `Conv2D` with one group per
    input channel (ConvNeXt's depthwise convolutions) becomes the equivalent
    `DepthwiseConv2D`, so an export runs in TF Serving without XLA. Other
    layers are copied as they are. The model must be Functional or
    Sequential: Keras cannot clone a subclassed model layer by layer.

    Args:
        model: a Functional or Sequential `keras.Model`.
        freeze_batch_norm: bool. Replace BatchNorm by the frozen kind.
            Defaults to `True`.

    Returns:
        A new `keras.Model` computing what `model` computes; with
        `freeze_batch_norm`, its BatchNorm layers normalize with their moving
        statistics whatever `training` it is called with.
    """
    replacements = dict(REPLACEMENTS)
    if not freeze_batch_norm:
        del replacements[keras.layers.BatchNormalization]
    return keras.models.clone_model(
        model,
        clone_function=lambda layer: _clone_layer(layer, replacements),
        recursive=True,
    )
