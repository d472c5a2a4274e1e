"""The registry of `keras.applications` backbones, and preparing one for a head."""

import dataclasses
from collections.abc import Callable

import keras

from keras_globalpool.arguments import check_option
from keras_globalpool.backend_support import (
    channels_first_convolution,
    check_channels_first_supported,
)
from keras_globalpool.builders.backbone_clone import clone_backbone, is_graph_model
from keras_globalpool.layers.preprocessing import (
    PREPROCESSING_MODES,
    BackbonePreprocessing,
)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the builders need to know about one `keras.applications` model.

    Args:
        constructor: the `keras.applications` function, or `None` for a
            user's model.
        preprocessing: string. The `BackbonePreprocessing` mode matching the
            model module's `preprocess_input`.
        min_size: int. The smallest input height and width it accepts.
        stages: tuple of layer names. The default intermediate stages of
            the multi-scale builder, at strides 8 and 16; the backbone's
            output is always the last stage.
    """

    constructor: Callable | None
    preprocessing: str
    min_size: int
    stages: tuple


def _family(preprocessing, min_size, stages_by_name):
    return {
        name: BackboneSpec(
            getattr(keras.applications, name), preprocessing, min_size, stages
        )
        for name, stages in stages_by_name.items()
    }


def _resnet_stages(stage3_blocks, stage4_blocks):
    return (f"conv3_block{stage3_blocks}_out", f"conv4_block{stage4_blocks}_out")


def _convnext_stages(variant, stage2_blocks):
    prefix = f"convnext_{variant}"
    return (
        f"{prefix}_stage_1_block_2_identity",
        f"{prefix}_stage_2_block_{stage2_blocks - 1}_identity",
    )


_RESNET_V2_STAGES = ("conv3_block1_preact_relu", "conv4_block1_preact_relu")
_DENSENET_STAGES = ("pool3_relu", "pool4_relu")
_EFFICIENTNET_STAGES = ("block4a_expand_activation", "block6a_expand_activation")

BACKBONES = {
    **_family(
        "caffe",
        32,
        {
            "ResNet50": _resnet_stages(4, 6),
            "ResNet101": _resnet_stages(4, 23),
            "ResNet152": _resnet_stages(8, 36),
            "VGG16": ("block4_conv3", "block5_conv3"),
            "VGG19": ("block4_conv4", "block5_conv4"),
        },
    ),
    **_family(
        "tf",
        32,
        {
            "ResNet50V2": _RESNET_V2_STAGES,
            "ResNet101V2": _RESNET_V2_STAGES,
            "ResNet152V2": _RESNET_V2_STAGES,
            "MobileNet": ("conv_pw_5_relu", "conv_pw_11_relu"),
            "MobileNetV2": ("block_6_expand_relu", "block_13_expand_relu"),
            "NASNetMobile": ("normal_concat_3", "normal_concat_8"),
            "NASNetLarge": ("normal_concat_5", "normal_concat_12"),
        },
    ),
    **_family("tf", 71, {"Xception": ("block4_sepconv1_act", "block13_sepconv1_act")}),
    **_family(
        "tf",
        75,
        {
            "InceptionV3": ("mixed2", "mixed7"),
            "InceptionResNetV2": ("block35_10_ac", "block17_20_ac"),
        },
    ),
    **_family(
        "torch",
        32,
        {
            "DenseNet121": _DENSENET_STAGES,
            "DenseNet169": _DENSENET_STAGES,
            "DenseNet201": _DENSENET_STAGES,
        },
    ),
    # These models rescale and normalize inside themselves.
    **_family(
        "none",
        32,
        {
            **{f"EfficientNetB{i}": _EFFICIENTNET_STAGES for i in range(8)},
            **{
                f"EfficientNetV2{size}": _EFFICIENTNET_STAGES
                for size in ("B0", "B1", "B2", "B3", "S", "M", "L")
            },
            "ConvNeXtTiny": _convnext_stages("tiny", 9),
            "ConvNeXtSmall": _convnext_stages("small", 27),
            "ConvNeXtBase": _convnext_stages("base", 27),
            "ConvNeXtLarge": _convnext_stages("large", 27),
            "ConvNeXtXLarge": _convnext_stages("xlarge", 27),
            "MobileNetV3Small": ("expanded_conv_2_add", "expanded_conv_7_add"),
            "MobileNetV3Large": ("expanded_conv_5_add", "expanded_conv_11_add"),
        },
    ),
}

# A user's `keras.Model`: no preprocessing, no size limit, no known stages.
CUSTOM_BACKBONE = BackboneSpec(None, "none", 1, ())


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


def resolve_backbone(backbone, input_shape, weights=DEFAULT_WEIGHTS):
    """Returns a backbone model and its spec, from a name or a model.

    Args:
        backbone: a `keras.applications` model name in `BACKBONES`, or a
            `keras.Model`.
        input_shape: tuple of 3 ints. The image shape, without the batch.
            For a name, 1 channel (grayscale) or 3; the model built takes 3.
        weights: `None`, `"imagenet"` or the path of a weights file, passed
            to the `keras.applications` constructor. Must be left out (or
            `None`) for a model. Defaults to `"imagenet"`.

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


def prepare_backbone(
    model,
    input_shape,
    preprocessing,
    freeze_backbone,
    outputs=None,
    freeze_batch_norm=True,
):
    """The preprocessing and the `"backbone"` sub-model of a builder.

    Args:
        model: the backbone `keras.Model`, from `resolve_backbone`.
        input_shape: tuple of 3 ints. The images' shape, without the batch.
        preprocessing: string, a `BackbonePreprocessing` mode.
        freeze_backbone: bool. Freeze every backbone weight.
        outputs: optional list of layer names whose outputs the sub-model
            returns, in order; defaults to the model's output.
        freeze_batch_norm: bool. Keep BatchNorm in inference mode.

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
    backbone.trainable = not freeze_backbone
    preprocess = _images_to_backbone(
        tuple(input_shape),
        backbone.input_shape[1:],
        BackbonePreprocessing(preprocessing, name="preprocessing"),
    )
    return preprocess, backbone
