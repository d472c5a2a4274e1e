"""`build_multiscale_classifier`: pool several backbone stages, then classify."""

import keras

from keras_globalpool.builders.backbones import (
    DEFAULT_WEIGHTS,
    prepare_backbone,
    resolve_backbone,
)
from keras_globalpool.builders.head import (
    check_head_arguments,
    classification_head,
    make_pooler,
)


def _stage_names(base, spec, stages):
    """The stage layer names, checked against the backbone's layers."""
    if stages is None:
        if not spec.stages:
            raise ValueError(
                "`stages` must be given for a keras.Model backbone: a list of "
                "the names of the layers to pool. Received: stages=None"
            )
        stages = (*spec.stages, base.layers[-1].name)
    stages = list(stages)
    known = {layer.name for layer in base.layers}
    unknown = [stage for stage in stages if stage not in known]
    if not stages or unknown:
        raise ValueError(
            "`stages` must be a non-empty list of names of backbone layers. "
            f"Unknown: {unknown}. Received: stages={stages}"
        )
    return stages


def build_multiscale_classifier(
    backbone,
    num_classes,
    *,
    stages=None,
    input_shape=(224, 224, 3),
    pooling="avg",
    weights=DEFAULT_WEIGHTS,
    freeze_backbone=True,
    freeze_batch_norm=True,
    dropout=0.2,
    hidden_units=(),
    activation="softmax",
    hidden_activation="relu",
    hidden_dropout=0.0,
    preprocessing=None,
    name="multiscale_classifier",
):
    """Builds a classifier on pooled features from several backbone stages.

    The multi-scale pattern: early stages see small
    details, late ones see whole objects. Each stage's feature map gets its
    own pooling layer, `pooler_1`, `pooler_2`, ..., the pooled vectors are
    concatenated by the layer `pooled_features`, and the head is the one of
    `build_classifier`. The `backbone` sub-model returns one feature map per
    stage; everything else, frozen BatchNorm and the float32 output
    included, is as in `build_classifier`.

    Args:
        backbone: string or `keras.Model`. A `keras.applications` model name
            (see `kgp.BACKBONES`) or a model, as in `build_classifier`.
        num_classes: int >= 1. The number of classes.
        stages: optional list of layer names of the backbone whose outputs
            are pooled, in order. Defaults to the registry's stages at
            strides 8 and 16 followed by the backbone's output (for
            `"ResNet50"`: `conv3_block4_out`, `conv4_block6_out` and
            `conv5_block3_out`); required for a model.
        input_shape: tuple of 3 ints; with a name, 1 channel (grayscale,
            repeated to RGB) or 3. Defaults to `(224, 224, 3)`.
        pooling: a `kgp.get` identifier or `"flatten"`; a fresh layer is made
            for every stage. Defaults to `"avg"`.
        weights: `None`, `"imagenet"` or the path of a weights file; leave
            it out (or `None`) for a model. Defaults to `"imagenet"`.
        freeze_backbone: bool. Defaults to `True`.
        freeze_batch_norm: bool. Keep every backbone BatchNorm in inference
            mode, its moving statistics fixed even after unfreezing, as
            fine-tuning a pretrained backbone needs. Set it to `False` to
            train a backbone from scratch. Defaults to `True`.
        dropout: float in [0, 1). Defaults to `0.2`.
        hidden_units: sequence of ints. Defaults to `()`.
        activation: the activation of `predictions`. Defaults to `"softmax"`.
        hidden_activation: the activation of the hidden layers. Defaults to
            `"relu"`.
        hidden_dropout: float in [0, 1). Defaults to `0.0`.
        preprocessing: optional string, a `kgp.BackbonePreprocessing` mode.
            Defaults to the backbone's own.
        name: string. Defaults to `"multiscale_classifier"`.

    Returns:
        A `keras.Model` from images to class probabilities, not compiled.

    Example:

    >>> model = kgp.build_multiscale_classifier(
    ...     "MobileNetV2", 5, input_shape=(64, 64, 3), weights=None)
    >>> model.get_layer("pooled_features").output.shape
    (None, 2048)
    """
    check_head_arguments(num_classes, dropout, hidden_units, hidden_dropout)

    # === Layers ===
    base, spec = resolve_backbone(backbone, input_shape, weights)
    stage_names = _stage_names(base, spec, stages)
    preprocess, backbone_model = prepare_backbone(
        base,
        input_shape,
        preprocessing or spec.preprocessing,
        freeze_backbone,
        stage_names,
        freeze_batch_norm=freeze_batch_norm,
    )
    poolers = [
        make_pooler(pooling, name=f"pooler_{index}")
        for index in range(1, len(stage_names) + 1)
    ]
    concatenate = keras.layers.Concatenate(name="pooled_features")

    # === Functional Model ===
    images = keras.Input(input_shape, name="images")
    feature_maps = backbone_model(preprocess(images))
    pooled = concatenate(
        [pooler(fmap) for pooler, fmap in zip(poolers, feature_maps, strict=True)]
    )
    outputs = classification_head(
        pooled,
        num_classes,
        dropout=dropout,
        hidden_units=hidden_units,
        hidden_activation=hidden_activation,
        hidden_dropout=hidden_dropout,
        activation=activation,
    )
    return keras.Model(images, outputs, name=name)
