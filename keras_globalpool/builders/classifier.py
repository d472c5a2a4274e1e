"""`build_classifier`: a pretrained backbone with a global-pooling head."""

import keras

from keras_globalpool.builders.backbone_features import (
    DEFAULT_WEIGHTS,
    backbone_features,
)
from keras_globalpool.builders.head import (
    check_head_arguments,
    classification_head,
    is_class_head,
    make_class_head,
    make_pooler,
)
from keras_globalpool.pooler import POOLER_NAME


def build_classifier(
    backbone,
    num_classes,
    *,
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
    stages=None,
    name="classifier",
):
    """Builds an image classifier: a backbone, a global pooling and a head.

    The transfer-learning model in one call. The model
    takes raw images (0-255, float or uint8) and runs the layers
    `grayscale_to_rgb` (for 1-channel images and a named backbone only),
    `preprocessing` (the backbone's own `preprocess_input`, as a
    serializable layer), `backbone` (a sub-model), `pooler`, `dropout`,
    the optional `hidden_1`, `hidden_dropout_1`, ... and `predictions`.

    The backbone's BatchNorm layers always run in inference mode, so their
    ImageNet statistics survive fine-tuning even after
    `model.get_layer("backbone").trainable = True`. `predictions` computes in
    float32, so under a `mixed_float16` or `mixed_bfloat16` policy the model
    still outputs float32. Build the model inside a `tf.distribute`
    strategy scope to train it on several devices.

    Args:
        backbone: string or `keras.Model`. A `keras.applications` model name
            such as `"ResNet50"`, `"EfficientNetV2B0"` or `"DenseNet121"`
            (see `kgp.BACKBONES`), built without its top; or a model that
            outputs a feature map. A Functional or Sequential model is
            copied with its BatchNorm frozen; a layer that cannot be copied
            from its config (a `Lambda`, some custom layers) is shared with
            it. A subclassed model holding BatchNorm needs
            `freeze_batch_norm=False`.
        num_classes: int >= 1. The number of classes.
        input_shape: tuple of 3 ints. The image shape without the batch
            axis, at least the backbone's minimum size (32, or 71 for
            Xception and 75 for Inception). With a name, 3 channels or 1:
            grayscale images are repeated to RGB inside the model, by the
            layer `grayscale_to_rgb`. Defaults to `(224, 224, 3)`.
        pooling: a `kgp.get` identifier (`"avg"`, `"max"`, `"mixed"`,
            `"attention"`, `"gem"`, a serialized layer dict or a layer used
            as a template), or `"flatten"` for the classic Flatten + Dense
            baseline. A layer must pool to a vector: a kgp pooling,
            `keras.layers.GlobalAveragePooling2D`, `GlobalMaxPooling2D` or
            `Flatten`, without `keepdims`. `"csra"` (or a
            `kgp.ClassSpecificResidualAttention` as a template) makes the
            `pooler` a CSRA head that gives the class logits itself, with
            `dropout` on the feature map, and `predictions` an `Activation`
            layer; `hidden_units` must then be `()` and `stages` `None`.
            Defaults to `"avg"`.
        weights: `None` (random), `"imagenet"`, or the path of a weights file
            for the `keras.applications` model without its top. Leave it out
            (or `None`) when `backbone` is a model, which has its own.
            Defaults to `"imagenet"`.
        freeze_backbone: bool. Freeze the backbone so only the head trains.
            Defaults to `True`.
        freeze_batch_norm: bool. Keep every backbone BatchNorm in inference
            mode, its moving statistics fixed even after unfreezing, as
            fine-tuning a pretrained backbone needs. Set it to `False` to
            train a backbone from scratch. Defaults to `True`.
        dropout: float in [0, 1). The rate of the `dropout` layer after the
            pooler. Defaults to `0.2`.
        hidden_units: sequence of ints. The sizes of optional hidden Dense
            layers between the pooler and `predictions`. Defaults to `()`.
        activation: the activation of `predictions`: `"softmax"`,
            `"sigmoid"` for multi-label, or `None` for logits. Defaults to
            `"softmax"`.
        hidden_activation: the activation of the hidden layers. Defaults to
            `"relu"`.
        hidden_dropout: float in [0, 1). The dropout rate after each hidden
            layer. Defaults to `0.0`.
        preprocessing: optional string, a `kgp.BackbonePreprocessing` mode
            (`"caffe"`, `"tf"`, `"torch"` or `"none"`). Defaults to the
            backbone's own mode, or `"none"` for a model.
        stages: `None`, `"auto"` or a list of names of backbone layers.
            With stages, the head is multi-scale, as in
            `build_multiscale_classifier`: the `backbone` sub-model returns
            each stage's feature map, each has its own pooling layer,
            `pooler_1`, `pooler_2`, ..., and the layer `pooled_features`
            concatenates the pooled vectors. `"auto"` picks the registry's
            stages at strides 8 and 16 and the backbone's output (for
            `"ResNet50"`: `conv3_block4_out`, `conv4_block6_out` and
            `conv5_block3_out`); a model needs a list. Defaults to `None`:
            one `pooler` on the backbone's output.
        name: string. The model's name. Defaults to `"classifier"`.

    Returns:
        A `keras.Model` from images to class probabilities, not compiled.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 5, input_shape=(96, 96, 3), weights=None)
    >>> model.predict(np.zeros((2, 96, 96, 3)), verbose=0).shape
    (2, 5)
    >>> model.get_layer("backbone").trainable
    False
    """
    check_head_arguments(num_classes, dropout, hidden_units, hidden_dropout)
    # Made first, so a bad `pooling` is refused before the backbone is built.
    if is_class_head(pooling):
        _check_class_head_arguments(hidden_units, stages)
        pooler = make_class_head(pooling, num_classes, dropout, name=POOLER_NAME)
    else:
        pooler = make_pooler(pooling, name=POOLER_NAME)
    images, features = backbone_features(
        backbone, input_shape, weights, preprocessing, freeze_batch_norm, stages
    )
    if is_class_head(pooling):
        outputs = keras.layers.Activation(
            activation, dtype="float32", name="predictions"
        )(pooler(features))
    else:
        outputs = classification_head(
            _pooled(pooler, pooling, features, stages),
            num_classes,
            dropout=dropout,
            hidden_units=hidden_units,
            hidden_activation=hidden_activation,
            hidden_dropout=hidden_dropout,
            activation=activation,
        )
    model = keras.Model(images, outputs, name=name)
    model.get_layer("backbone").trainable = not freeze_backbone
    return model


def _check_class_head_arguments(hidden_units, stages):
    if hidden_units:
        raise ValueError(
            "`hidden_units` must be () with pooling='csra', which maps the "
            f"feature map to class logits. Received: hidden_units={hidden_units!r}"
        )
    if stages is not None:
        raise ValueError(
            "`stages` must be None with pooling='csra', which takes one "
            f"feature map. Received: stages={stages!r}"
        )


def _pooled(pooler, pooling, features, stages):
    """The pooled vector: `pooler` on one map, or each stage's pooling concatenated."""
    if stages is None:
        return pooler(features)
    return keras.layers.Concatenate(name="pooled_features")(
        [
            make_pooler(pooling, name=f"pooler_{index}")(feature_map)
            for index, feature_map in enumerate(features, start=1)
        ]
    )
