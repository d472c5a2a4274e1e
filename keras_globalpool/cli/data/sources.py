"""`load`: one entry point for every data source, by name or by path."""

import pathlib

from keras_globalpool.cli.data.digits import load_digits, load_translated_digits
from keras_globalpool.cli.data.directory import load_directory
from keras_globalpool.cli.data.npz import load_npz
from keras_globalpool.cli.data.stream import stream_directory

DATASETS = {
    "translated-digits": load_translated_digits,
    "digits": load_digits,
}


def load(source="translated-digits", image_size=None, stream=False):
    """Loads a data set from a folder, a `.npz` file, or by name.

    A path that exists always wins: a folder named `digits` in the current
    folder is the user's data, not the built-in digits. A built-in name is
    used only when no file or folder of that name exists.

    Args:
        source: string or `pathlib.Path`. A folder of class subfolders
            (`load_directory`), a `.npz` file (`load_npz`), or
            `"translated-digits"` or `"digits"` (both embedded, see
            `load_translated_digits` and `load_digits`). Defaults to
            `"translated-digits"`.
        image_size: optional int or `(height, width)`. For folders: resize
            every image on loading. Defaults to `None`.
        stream: bool. For folders: list the files only, and decode them a
            batch at a time when read (`stream_directory`). Defaults to
            `False`: every image in memory.

    Returns:
        `ImageDataset`, or a `FileImageDataset` for a folder streamed.

    Example:

    >>> from keras_globalpool.cli import data as kgp_data
    >>> kgp_data.load("digits").num_classes
    10
    """
    path = pathlib.Path(source)
    if path.is_dir():
        if stream:
            return stream_directory(path, image_size=image_size)
        return load_directory(path, image_size=image_size)
    is_npz = path.suffix.lower() == ".npz"
    if path.exists() and not is_npz:
        raise ValueError(
            "`data` must be a folder of class subfolders or a .npz file. "
            f"Received: data={str(source)!r}, a file that exists but is neither "
            "(an existing path wins over a built-in data set of the same name)"
        )
    if is_npz:
        return load_npz(path)
    if str(source) in DATASETS:
        return DATASETS[str(source)]()
    names = ", ".join(repr(name) for name in DATASETS)
    raise ValueError(
        f"`data` must be one of {{{names}}}, a folder of class subfolders or a "
        f".npz file. Received: data={str(source)!r}, which is none of these "
        "(no such folder)"
    )
