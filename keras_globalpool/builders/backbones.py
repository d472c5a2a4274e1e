"""The registry of `keras.applications` backbones: what each builder needs to know."""

import dataclasses
from collections.abc import Callable

import keras


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
