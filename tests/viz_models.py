"""Convolutions for the heatmap tests' models that run on every CPU."""

import keras


def cpu_safe_conv2d(x, filters, data_format, strides=1):
    """A 3x3 `Conv2D` on `x`, whose result is in `data_format`.

    Without oneDNN, TensorFlow's CPU `Conv2D` runs channels_last only. For
    `"channels_first"` the conv runs channels_last between two `Permute`
    layers, so the model still takes channels_first images and its pooling
    reads a channels_first feature map: the layout the heatmap code must
    handle. The test of a genuinely channels_first conv is separate.

    Args:
        x: a symbolic tensor in `data_format`.
        filters: int. Output channels.
        data_format: `"channels_last"` or `"channels_first"`.
        strides: int. Defaults to `1`.

    Returns:
        The feature map, in `data_format`.
    """
    conv = keras.layers.Conv2D(filters, 3, strides=strides, padding="same")
    if data_format == "channels_last":
        return conv(x)
    x = keras.layers.Permute((2, 3, 1))(x)
    return keras.layers.Permute((3, 1, 2))(conv(x))
