"""Fitting images to a backbone: resizing and grayscale to RGB."""

import dataclasses

import numpy as np


def size_pair(image_size):
    """`image_size` as a `(height, width)` tuple, or a Keras-style `ValueError`.

    Args:
        image_size: int or `(height, width)`, each an int >= 1.

    Returns:
        Tuple `(height, width)`.

    Example:

    >>> from keras_globalpool.cli.data.transforms import size_pair
    >>> size_pair(32), size_pair((24, 32))
    ((32, 32), (24, 32))
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2 or not all(
        isinstance(d, int) and d >= 1 for d in image_size
    ):
        raise ValueError(
            "`image_size` must be an integer >= 1 or a (height, width) pair of "
            f"them. Received: image_size={image_size!r}"
        )
    return tuple(image_size)


def resize(dataset, image_size, batch_size=256):
    """Resizes every image (bilinear), keeping `uint8` storage.

    Args:
        dataset: `ImageDataset`.
        image_size: int or `(height, width)`.
        batch_size: int. Images resized at once. Defaults to `256`.

    Returns:
        An `ImageDataset`; `dataset` itself when the size already matches.

    Example:

    >>> from keras_globalpool.cli import data as kgp_data
    >>> kgp_data.resize(kgp_data.load_digits(), 32).x.shape
    (1797, 32, 32, 1)
    """
    import keras

    size = size_pair(image_size)
    if dataset.image_shape[:2] == size:
        return dataset
    resized = [
        keras.ops.convert_to_numpy(
            keras.ops.image.resize(
                dataset.x[start : start + batch_size].astype("float32"), size
            )
        )
        for start in range(0, len(dataset.x), batch_size)
    ]
    x = np.clip(np.round(np.concatenate(resized)), 0, 255)
    return dataclasses.replace(
        dataset,
        x=x.astype(dataset.x.dtype),
        description=f"{dataset.description}, resized to {size[0]}x{size[1]}",
    )


def to_rgb(dataset):
    """Repeats a grayscale channel three times, for RGB backbones.

    Args:
        dataset: `ImageDataset` with 1 or 3 channels, or a
            `FileImageDataset`, which repeats the channel as it reads.

    Returns:
        A dataset of the same kind with 3 channels; `dataset` itself when
        it has them.
    """
    if dataset.image_shape[-1] == 3:
        return dataset
    if not hasattr(dataset, "x"):  # A stream: no pixels to repeat yet.
        return dataset.to_rgb()
    return dataclasses.replace(
        dataset,
        x=np.repeat(dataset.x, 3, axis=-1),
        description=f"{dataset.description}, gray to RGB",
    )
