"""Heatmap post-processing shared by CAM and attention maps."""

import numpy as np
from keras import ops


def image_batch(images):
    """`images` as a float32 array, checked to be a batch of 2D images."""
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4:
        raise ValueError(
            "`images` must be a batch of images, of rank 4. "
            f"Received: images.shape={images.shape}"
        )
    return images


def spatial_size(images, data_format):
    """The `(height, width)` of a batch of images in `data_format`."""
    if data_format == "channels_last":
        return tuple(images.shape[1:3])
    return tuple(images.shape[2:4])


def resize_heatmaps(heatmaps, size):
    """Resizes a batch of 2D heatmaps bilinearly to `size`.

    Sampling uses half-pixel centres, as PIL and OpenCV do, so a map twice as
    coarse as the image lines up with it: `[[0, 1]]` widened to 4 columns is
    `[[0, 0.25, 0.75, 1]]`. Values stay within each map's range.

    Args:
        heatmaps: array of shape `(batch, h, w)`.
        size: tuple `(height, width)`.

    Returns:
        float32 NumPy array of shape `(batch, height, width)`.

    Example:

    >>> resize_heatmaps(np.zeros((2, 4, 4)), (16, 16)).shape
    (2, 16, 16)
    """
    maps = np.asarray(heatmaps, dtype="float32")
    if maps.shape[1:] == tuple(size):
        return maps
    resized = ops.image.resize(
        maps[..., None], size, interpolation="bilinear", data_format="channels_last"
    )
    return ops.convert_to_numpy(resized)[..., 0]


def normalize_heatmaps(heatmaps):
    """Scales each heatmap to [0, 1] by its own minimum and maximum.

    A constant map, which points nowhere, becomes all zeros.

    Args:
        heatmaps: array of shape `(batch, height, width)`.

    Returns:
        float32 NumPy array of the same shape.

    Example:

    >>> normalize_heatmaps(np.array([[[2.0, 4.0]]]))
    array([[[0., 1.]]], dtype=float32)
    """
    maps = np.asarray(heatmaps, dtype="float32")
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    safe_span = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (maps - low) / safe_span, 0.0).astype("float32")
