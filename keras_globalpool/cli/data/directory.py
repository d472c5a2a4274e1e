"""Images from a folder of class subfolders, decoded as Keras decodes them.

Hidden entries, whose names start with `.`, are skipped at every level:
they are not the user's images but what tools leave behind, such as
macOS's `._cat.png` AppleDouble files or a `.thumbnails` folder.
"""

import collections
import dataclasses
import pathlib

import numpy as np

from keras_globalpool.cli.data.dataset import ImageDataset
from keras_globalpool.cli.data.transforms import size_pair

# The formats `keras.utils.image_dataset_from_directory` reads.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_GRAYSCALE_MODES = ("1", "L", "I", "I;16")


def _visible(path, root):
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _class_images(root):
    """Maps each visible class subfolder's name to its image files, sorted."""
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and _visible(p, folder)
        )
        if files:
            classes[folder.name] = files
    return classes


def _unreadable(path, reason):
    return ValueError(
        "Every image under the data folder must be readable. Received: "
        f"{str(path)!r}, {reason}. Remove or repair it (files and folders "
        "whose names start with '.' are skipped)"
    )


def _image_modes(files):
    """Maps each `(width, height)` to its files, and returns the pixel modes."""
    from PIL import Image

    sizes = collections.defaultdict(list)
    modes = set()
    for path in files:
        try:
            with Image.open(path) as image:  # Reads the header only.
                sizes[image.size].append(path)
                modes.add(image.mode)
        except (OSError, Image.DecompressionBombError) as error:
            reason = f"which is not an image Pillow can open: {error}"
            raise _unreadable(path, reason) from error
    return sizes, modes


def _decode(path, image_size, channels):
    """One image as `uint8` (height, width, channels), as Keras's loader reads it."""
    import tensorflow as tf

    try:
        image = tf.io.decode_image(
            tf.io.read_file(str(path)), channels=channels, expand_animations=False
        )
    except tf.errors.OpError as error:
        raise _unreadable(path, f"which cannot be decoded: {error.message}") from error
    if tuple(image.shape[:2]) != image_size:
        image = tf.image.resize(image, image_size, method="bilinear")
    return np.round(np.clip(image.numpy(), 0, 255)).astype("uint8")


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


@dataclasses.dataclass(frozen=True)
class Listing:
    """What `scan_directory` finds: the files, their labels and how to decode them."""

    files: tuple
    y: np.ndarray
    class_names: tuple
    image_size: tuple
    channels: int
    description: str


def scan_directory(path, image_size=None):
    """Lists the images under `path/<class name>/` and reads their headers only.

    The checks and choices of `load_directory`, without decoding a pixel:
    the classes, the one image size (or `image_size`), and the channels to
    decode (1 when every file is grayscale, else 3).

    Args:
        path: string or `pathlib.Path`, as for `load_directory`.
        image_size: optional int or `(height, width)`, as for `load_directory`.

    Returns:
        `Listing`.
    """
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
    files = [f for class_files in classes.values() for f in class_files]
    sizes, modes = _image_modes(files)
    if image_size is None:
        if len(sizes) > 1:
            raise ValueError(_mismatch_message(root, sizes))
        width, height = next(iter(sizes))
        image_size = (height, width)
    image_size = size_pair(image_size)
    channels = 1 if modes <= set(_GRAYSCALE_MODES) else 3
    y = np.repeat(np.arange(len(classes)), [len(f) for f in classes.values()])
    return Listing(
        files=tuple(files),
        y=y.astype("int64"),
        class_names=tuple(classes),
        image_size=image_size,
        channels=channels,
        description=f"folder {str(root)!r}, {image_size[0]}x{image_size[1]}",
    )


def load_directory(path, image_size=None):
    """Loads every image under `path/<class name>/` into memory.

    The subfolders' names, sorted, are the classes; files and folders whose
    names start with `.` are skipped. Images are decoded as
    `keras.utils.image_dataset_from_directory` decodes them, as grayscale
    when every file is grayscale and as RGB otherwise, and resized
    bilinearly when `image_size` asks for it.

    Args:
        path: string or `pathlib.Path`. A folder with at least 2 class
            subfolders of `.bmp`, `.gif`, `.jpeg`, `.jpg` or `.png` files.
        image_size: optional int or `(height, width)`. Resize every image to
            this size. Defaults to `None`: all images must share one size.

    Returns:
        `ImageDataset` with `uint8` images.

    Raises:
        ValueError: fewer than 2 classes, images of several sizes without
            `image_size`, or a file that is not a readable image (named).

    Example:

    >>> import os
    >>> for name in ("daisy", "rose"):
    ...     os.makedirs(f"flowers/{name}", exist_ok=True)
    ...     for index in range(2):
    ...         keras.utils.save_img(
    ...             f"flowers/{name}/{index}.png", np.zeros((8, 8, 3), "uint8"))
    >>> from keras_globalpool.cli import data as kgp_data
    >>> data = kgp_data.load_directory("flowers/", image_size=4)
    >>> data.class_names, data.x.shape
    (('daisy', 'rose'), (4, 4, 4, 3))
    """
    listing = scan_directory(path, image_size)
    x = np.stack(
        [_decode(f, listing.image_size, listing.channels) for f in listing.files]
    )
    return ImageDataset(
        x=x,
        y=listing.y,
        class_names=listing.class_names,
        description=listing.description,
    )
