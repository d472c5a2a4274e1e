"""From images to a backbone's feature maps: the graph every builder starts with."""

import keras

from keras_globalpool.arguments import check_option
from keras_globalpool.backend_support import (
    channels_first_convolution,
    check_channels_first_supported,
)
from keras_globalpool.builders.backbone_clone import clone_backbone, is_graph_model
from keras_globalpool.builders.backbones import BACKBONES, CUSTOM_BACKBONE
from keras_globalpool.layers.preprocessing import (
    PREPROCESSING_MODES,
    BackbonePreprocessing,
)


class _DefaultWeights(str):
    """`"imagenet"`, as the builders' default `weights`: not given by the user."""


# A name loads ImageNet weights by default; a model has its own weights, so
# with a model only a `weights` the user gave is an error, told by identity.
DEFAULT_WEIGHTS = _DefaultWeights("imagenet")


def _channel_index():
    """The channel's index in an `input_shape` without the batch axis."""
    return -1 if keras.config.image_data_format() == "channels_last" else 0


def _spatial_size(input_shape):
    if keras.config.image_data_format() == "channels_last":
        return tuple(input_shape[:2])
    return tuple(input_shape[1:])


def _check_input_shape(name, spec, input_shape):
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be a tuple of 3 integers, such as (224, 224, 3). "
            f"Received: input_shape={input_shape}"
        )
    if input_shape[_channel_index()] not in (1, 3):
        raise ValueError(
            "`input_shape` must have 3 channels (RGB) or 1 (grayscale, repeated "
            f"to RGB inside the model) for backbone={name!r}; for other images, "
            "pass your own keras.Model as `backbone`. "
            f"Received: input_shape={input_shape}"
        )
    if any(d is not None and d < spec.min_size for d in _spatial_size(input_shape)):
        raise ValueError(
            f"`input_shape` must be at least {spec.min_size}x{spec.min_size} "
            f"for backbone={name!r}. Received: input_shape={input_shape}"
        )


def _rgb(input_shape):
    shape = list(input_shape)
    shape[_channel_index()] = 3
    return tuple(shape)


def _as_functional(model, input_shape):
    # A subclassed model (or a Sequential without an input yet) has no graph
    # to clone; nested in one, it is cloned, or shared, as a single layer.
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, model(inputs), name=model.name)


def _check_weights_for_model(weights):
    if weights is not DEFAULT_WEIGHTS and weights is not None:
        raise ValueError(
            "`weights` must be left out (or None) when `backbone` is a "
            "keras.Model, which brings its own weights: load a file into it "
            "with `backbone.load_weights(path)` before building. "
            f"Received: weights={weights!r}"
        )


def _check_model(model, input_shape):
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            "`backbone` must be a model with one input, the images, and one "
            f"output, a feature map. Received: a model with {len(model.inputs)} "
            f"inputs and {len(model.outputs)} outputs"
        )
    expected = tuple(model.input_shape[1:])
    if len(expected) != len(input_shape) or any(
        e is not None and e != d for e, d in zip(expected, input_shape, strict=True)
    ):
        raise ValueError(
            "`input_shape` must match the backbone model's input shape "
            f"{expected}. Received: input_shape={input_shape}"
        )
    convolution = channels_first_convolution(model)
    if convolution is not None:
        check_channels_first_supported(
            f"The backbone model {model.name!r} (its layer {convolution.name!r})"
        )


def _resolve_backbone(backbone, input_shape, weights):
    """Returns a backbone model and its spec, from a name or a model.

    Args:
        backbone: a `keras.applications` model name in `BACKBONES`, or a
            `keras.Model`.
        input_shape: tuple of 3 ints. The image shape, without the batch.
            For a name, 1 channel (grayscale) or 3; the model built takes 3.
        weights: `None`, `"imagenet"` or the path of a weights file, passed
            to the `keras.applications` constructor. Must be left out (or
            `None`) for a model.

    Returns:
        `(model, spec)`: the backbone without its top, and its
        `BackboneSpec` (`CUSTOM_BACKBONE` for a user's model). A
        Functional or Sequential model is returned unchanged; another
        model comes nested in a Functional one, its only layer.
    """
    input_shape = tuple(input_shape)
    if isinstance(backbone, keras.Model):
        _check_weights_for_model(weights)
        model = backbone
        if not (is_graph_model(model) and model.built):
            model = _as_functional(model, input_shape)
        _check_model(model, input_shape)
        return model, CUSTOM_BACKBONE
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        names = ", ".join(repr(name) for name in sorted(BACKBONES))
        raise ValueError(
            f"`backbone` must be a keras.Model or one of {{{names}}}. "
            f"Received: backbone={backbone!r}"
        )
    spec = BACKBONES[backbone]
    _check_input_shape(backbone, spec, input_shape)
    data_format = keras.config.image_data_format()
    if data_format == "channels_first":
        check_channels_first_supported(
            f"backbone={backbone!r} with keras.config.image_data_format()="
            f"{data_format!r}"
        )
    model = spec.constructor(
        include_top=False, weights=weights, input_shape=_rgb(input_shape)
    )
    return model, spec


def _images_to_backbone(input_shape, backbone_shape, preprocess):
    index = _channel_index()
    if input_shape[index] == backbone_shape[index]:
        return preprocess
    # Only a keras.applications backbone differs: grayscale images, RGB model.
    to_rgb = keras.layers.Concatenate(
        axis=index if index < 0 else index + 1, name="grayscale_to_rgb"
    )
    return lambda images: preprocess(to_rgb([images] * 3))


def _prepare_backbone(model, input_shape, preprocessing, freeze_batch_norm, outputs):
    """The preprocessing and the `"backbone"` sub-model of a builder.

    Args:
        model: the backbone `keras.Model`, from `_resolve_backbone`.
        input_shape: tuple of 3 ints. The images' shape, without the batch.
        preprocessing: string, a `BackbonePreprocessing` mode.
        freeze_batch_norm: bool. Keep BatchNorm in inference mode.
        outputs: `None` for the model's output, or a list of layer names
            whose outputs the sub-model returns, in order.

    Returns:
        `(preprocess, backbone)`. `preprocess` maps the images tensor to
        the backbone's input through the layer `"preprocessing"`, after
        the layer `"grayscale_to_rgb"` (a `keras.layers.Concatenate` of
        three copies) where grayscale images feed an RGB backbone. The
        backbone, named `"backbone"`, is `clone_backbone(model,
        freeze_batch_norm)`.
    """
    check_option("preprocessing", preprocessing, tuple(PREPROCESSING_MODES))
    clone = clone_backbone(model, freeze_batch_norm)
    if outputs is None:
        features = clone.outputs[0]
    else:
        features = [clone.get_layer(name).output for name in outputs]
    backbone = keras.Model(clone.inputs[0], features, name="backbone")
    preprocess = _images_to_backbone(
        tuple(input_shape),
        backbone.input_shape[1:],
        BackbonePreprocessing(preprocessing, name="preprocessing"),
    )
    return preprocess, backbone


def _stage_names(model, spec, stages):
    """The layer names `stages` stands for, checked against `model`'s layers."""
    if isinstance(stages, str):
        check_option("stages", stages, ("auto",))
        if not spec.stages:
            raise ValueError(
                "`stages` must be given for a keras.Model backbone: a list of "
                f"the names of the layers to pool. Received: stages={stages!r}"
            )
        stages = (*spec.stages, model.layers[-1].name)
    if not isinstance(stages, (list, tuple)):
        raise ValueError(
            '`stages` must be None, "auto" or a list of names of backbone '
            f"layers. Received: stages={stages!r}"
        )
    stages = list(stages)
    known = {layer.name for layer in model.layers}
    unknown = [stage for stage in stages if stage not in known]
    if not stages or unknown:
        raise ValueError(
            "`stages` must be a non-empty list of names of backbone layers. "
            f"Unknown: {unknown}. Received: stages={stages}"
        )
    return stages


def backbone_features(
    backbone,
    input_shape,
    weights,
    preprocessing,
    freeze_batch_norm,
    stages=None,
):
    """The images input and the backbone's feature maps: a builder's start.

    Args:
        backbone: a `keras.applications` model name in `BACKBONES`, or a
            `keras.Model` with one image input and one feature-map output.
        input_shape: tuple of 3 ints. The images' shape, without the batch.
        weights: `None`, `"imagenet"` or the path of a weights file for a
            name; `DEFAULT_WEIGHTS` or `None` for a model.
        preprocessing: `None` for the backbone's own mode, or a
            `BackbonePreprocessing` mode.
        freeze_batch_norm: bool. Keep every backbone BatchNorm in inference
            mode.
        stages: `None` for the backbone's output; `"auto"` for the
            registry's stages at strides 8 and 16 and the output; or a list
            of backbone layer names.

    Returns:
        `(images, features)`: the `keras.Input` named `"images"`, and the
        output of the `"backbone"` sub-model on it, one feature map, or a
        list of one per stage when `stages` is given. The sub-model is
        trainable: the builder that makes the model freezes it.

    Example:

    >>> from keras_globalpool.builders.backbone_features import backbone_features
    >>> images, features = backbone_features(
    ...     "MobileNetV2", (64, 64, 3), weights=None, preprocessing=None,
    ...     freeze_batch_norm=True, stages="auto")
    >>> [tuple(f.shape) for f in features]
    [(None, 8, 8, 192), (None, 4, 4, 576), (None, 2, 2, 1280)]
    """
    model, spec = _resolve_backbone(backbone, input_shape, weights)
    outputs = None if stages is None else _stage_names(model, spec, stages)
    preprocess, backbone_model = _prepare_backbone(
        model,
        input_shape,
        preprocessing or spec.preprocessing,
        freeze_batch_norm,
        outputs,
    )
    images = keras.Input(input_shape, name="images")
    return images, backbone_model(preprocess(images))
