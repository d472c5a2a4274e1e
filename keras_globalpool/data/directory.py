"""Images from a folder of class subfolders, read by Keras."""

import collections
import pathlib

import numpy as np

from keras_globalpool.data.dataset import ImageDataset

# The formats `keras.utils.image_dataset_from_directory` reads.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_GRAYSCALE_MODES = ("1", "L", "I", "I;16")


def _class_images(root):
    """Maps each class subfolder's name to its image files, sorted."""
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            classes[folder.name] = files
    return classes


def _image_modes(files):
    """Maps each `(width, height)` to its files, and returns the pixel modes."""
    from PIL import Image

    sizes = collections.defaultdict(list)
    modes = set()
    for path in files:
        with Image.open(path) as image:  # Reads the header only.
            sizes[image.size].append(path)
            modes.add(image.mode)
    return sizes, modes


def _mismatch_message(root, sizes):
    examples = ", ".join(
        f"{h}x{w} ({len(paths)} images, e.g. {paths[0].relative_to(root)})"
        for (w, h), paths in sorted(sizes.items(), key=lambda kv: -len(kv[1]))[:4]
    )
    return (
        f"The images in {str(root)!r} have {len(sizes)} different sizes "
        f"(height x width): {examples}. Resize them to one size first, or pass "
        "`image_size` (`--image-size` on the command line) to resize on loading."
    )


def load_directory(path, image_size=None):
    """Loads every image under `path/<class name>/` into memory.

    The subfolders' names, sorted, are the classes. Images are read with
    `keras.utils.image_dataset_from_directory`, as grayscale when every file
    is grayscale and as RGB otherwise.

    Args:
        path: string or `pathlib.Path`. A folder with at least 2 class
            subfolders of `.bmp`, `.gif`, `.jpeg`, `.jpg` or `.png` files.
        image_size: optional int or `(height, width)`. Resize every image to
            this size. Defaults to `None`: all images must share one size.

    Returns:
        `ImageDataset` with `uint8` images.

    Example:

    >>> data = kgp.data.load_directory("flowers/", image_size=96)
    >>> data.class_names
    ('daisy', 'rose')
    """
    import keras

    root = pathlib.Path(path)
    if not root.is_dir():
        raise ValueError(
            "`path` must be an existing folder of class subfolders. "
            f"Received: path={str(path)!r}, which does not exist or is not a folder"
        )
    classes = _class_images(root)
    if len(classes) < 2:
        raise ValueError(
            "`path` must hold at least 2 class subfolders with images "
            f"({', '.join(IMAGE_SUFFIXES)}). Received: path={str(path)!r} with "
            f"{len(classes)}: {sorted(classes)}"
        )
    sizes, modes = _image_modes([f for files in classes.values() for f in files])
    if image_size is None:
        if len(sizes) > 1:
            raise ValueError(_mismatch_message(root, sizes))
        width, height = next(iter(sizes))
        image_size = (height, width)
    elif isinstance(image_size, int):
        image_size = (image_size, image_size)
    grayscale = modes <= set(_GRAYSCALE_MODES)
    images = keras.utils.image_dataset_from_directory(
        root,
        labels="inferred",
        label_mode="int",
        class_names=list(classes),
        color_mode="grayscale" if grayscale else "rgb",
        batch_size=None,
        image_size=tuple(image_size),
        shuffle=False,
        verbose=False,
    )
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in images), strict=True)
    return ImageDataset(
        x=np.round(np.clip(np.stack(xs), 0, 255)).astype("uint8"),
        y=np.asarray(ys, dtype="int64"),
        class_names=tuple(classes),
        description=f"folder {str(root)!r}, {image_size[0]}x{image_size[1]}",
    )
