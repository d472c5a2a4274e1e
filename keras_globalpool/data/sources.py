"""`load`: one entry point for every data source, by name or by path."""

import pathlib

from keras_globalpool.data.digits import load_digits, load_translated_digits
from keras_globalpool.data.directory import load_directory
from keras_globalpool.data.npz import load_npz

DATASETS = {
    "translated-digits": load_translated_digits,
    "digits": load_digits,
}


def load(source="translated-digits", image_size=None):
    """Loads a data set by name, from a folder, or from a `.npz` file.

    Args:
        source: string or `pathlib.Path`. `"translated-digits"` or
            `"digits"` (both embedded, see `load_translated_digits` and
            `load_digits`), a folder of class subfolders (`load_directory`)
            or a `.npz` file (`load_npz`). Defaults to `"translated-digits"`.
        image_size: optional int or `(height, width)`. For folders: resize
            every image on loading. Defaults to `None`.

    Returns:
        `ImageDataset`.

    Example:

    >>> kgp.data.load("digits").num_classes
    10
    """
    if str(source) in DATASETS:
        return DATASETS[str(source)]()
    path = pathlib.Path(source)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if path.is_dir():
        return load_directory(path, image_size=image_size)
    names = ", ".join(repr(name) for name in DATASETS)
    raise ValueError(
        f"`data` must be one of {{{names}}}, a folder of class subfolders or a "
        f".npz file. Received: data={str(source)!r}, which is none of these "
        "(no such folder)"
    )
