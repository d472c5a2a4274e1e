"""The backbones `compare` trains: its own small CNN or a `keras.applications` model."""

import keras

from keras_globalpool.builders.backbones import BACKBONES
from keras_globalpool.builders.classifier import build_classifier
from keras_globalpool.cli.interruption import is_interruption

SMALL_CNN = "small-cnn"
SMALL_CNN_WIDTHS = (16, 32, 64)
# Downsampling stops before the map gets smaller than this, so small images
# (8x8 plain digits) keep positions for the instance normalization to compare.
SMALL_CNN_MIN_MAP = 4


def small_cnn(input_shape, widths=SMALL_CNN_WIDTHS):
    """A small CNN backbone, fast to train from scratch on a CPU.

    It rescales raw pixels to [0, 1] itself (a user's backbone gets no
    preprocessing from `build_classifier`), then runs one 3x3 ReLU
    convolution per width, halving the resolution between them while it
    stays at least 4x4: a 24x24 input gives a 6x6 map, 8x8 gives 4x4. The
    last convolution is instance-normalized (each channel of each image
    standardized over positions), so the map a head pools shows where a
    feature is stronger than in the rest of the image, not the background
    level; without it, average pooling trained slowly and erratically here.
    Instance normalization uses no batch statistics, so it trains and
    predicts the same way.

    Args:
        input_shape: tuple `(height, width, channels)`.
        widths: tuple of ints. The filters of each convolution. Defaults to
            `(16, 32, 64)`.

    Returns:
        A `keras.Model` from raw images to a feature map.
    """
    images = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255.0)(images)
    size = min(input_shape[:2])
    for index, filters in enumerate(widths):
        if index and size // 2 >= SMALL_CNN_MIN_MAP:
            x = keras.layers.MaxPooling2D()(x)
            size //= 2
        last = index == len(widths) - 1
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            activation=None if last else "relu",
            use_bias=not last,  # The normalization cancels a bias.
        )(x)
    x = keras.layers.GroupNormalization(groups=-1)(x)
    x = keras.layers.ReLU()(x)
    return keras.Model(images, x, name="small_cnn")


def bag_classifier(pooling, input_shape, num_classes):
    """A multiple-instance classifier: instances encoded, then pooled per bag.

    Each instance (an image of a padded bag) is flattened and encoded by two
    ReLU `Dense` layers; all-zero instances are padding, masked by
    `keras.layers.Masking`, so the pooling sees only the real ones.

    Args:
        pooling: string. A `kgp.get` name.
        input_shape: tuple `(max_bag, height, width, channels)`.
        num_classes: int.

    Returns:
        An uncompiled `keras.Model` from raw bags to class probabilities.
    """
    from keras_globalpool.registry import get

    bags = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255.0)(bags)
    x = keras.layers.Reshape((input_shape[0], -1))(x)
    x = keras.layers.Masking(0.0)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = get(pooling, name="pooler")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(bags, outputs, name="bag_classifier")


def backbone_names():
    """Every name `--backbone` takes: the small CNN, then `kgp.BACKBONES`."""
    return (SMALL_CNN, *sorted(BACKBONES))


def check_backbone(name, weights):
    """Raises a Keras-style `ValueError` for an unknown backbone or bad weights.

    Args:
        name: string. The `--backbone` value.
        weights: `None`, `"imagenet"` or a weights file path.

    Returns:
        `name`, unchanged.
    """
    if name not in backbone_names():
        names = ", ".join(repr(n) for n in backbone_names())
        raise ValueError(
            f"`backbone` must be one of {{{names}}}. Received: backbone={name!r}"
        )
    if name == SMALL_CNN and weights is not None:
        raise ValueError(
            f"`weights` must be None for backbone={SMALL_CNN!r}, which trains "
            f"from scratch. Received: weights={weights!r}"
        )
    return name


def build_model(backbone, pooling, input_shape, num_classes, weights):
    """Builds one classifier of the comparison with `kgp.build_classifier`.

    The small CNN and an application without weights train whole, BatchNorm
    statistics included; an application with weights is frozen, so only its
    head trains.

    Args:
        backbone: string, one of `backbone_names()`.
        pooling: string. The head: `"flatten"` or a `kgp.get` name.
        input_shape: tuple `(height, width, channels)`.
        num_classes: int.
        weights: `None`, `"imagenet"` or a weights file path.

    Returns:
        An uncompiled `keras.Model`.
    """
    name = backbone
    if backbone == SMALL_CNN:
        backbone = small_cnn(input_shape)
    try:
        return build_classifier(
            backbone,
            num_classes,
            input_shape=input_shape,
            pooling=pooling,
            weights=weights,
            freeze_backbone=weights is not None,
            freeze_batch_norm=weights is not None,
        )
    except Exception as error:
        # Bad shapes and names are already explained; Ctrl-C is no error.
        shape_error = isinstance(error, ValueError) and weights == "imagenet"
        if weights is None or shape_error or is_interruption(error):
            raise
        raise _weights_error(name, weights, error) from error


def _weights_error(backbone, weights, error):
    """A `ValueError` saying which weights failed to load, and what to do."""
    reason = " ".join(str(error).split())
    if weights == "imagenet":
        # Keras raises a bare `Exception("URL fetch failure ...")` offline.
        return ValueError(
            f"The ImageNet weights of {backbone} could not be downloaded or read "
            f"({reason}). Connect to the internet once (Keras keeps them in "
            "~/.keras/models/), pass a weights file with `--weights FILE`, or "
            "train from scratch with `--weights none`"
        )
    return ValueError(
        f"`weights` must be a weights file of {backbone} that Keras can load. "
        f"Received: weights={weights!r}: {reason}"
    )
