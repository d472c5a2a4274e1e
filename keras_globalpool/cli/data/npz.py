"""Images from a NumPy `.npz` file with arrays `x` and `y`."""

import pathlib
import zipfile
import zlib

import numpy as np

from keras_globalpool.cli.data.dataset import ImageDataset


def _images(x, path):
    """Returns `x` as `(samples, height, width, channels)`, or raises."""
    if x.dtype.kind not in "biuf":
        raise ValueError(
            f"`x` in {str(path)!r} must hold numbers, raw pixel values in "
            f"[0, 255]. Received: x.dtype={x.dtype}"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"`x` in {str(path)!r} must have shape (samples, height, width) or "
            "(samples, height, width, channels) with 1 or 3 channels. "
            f"Received: x.shape={x.shape}"
        )
    if x.dtype == np.uint8:
        return x
    x = x.astype("float32")
    if x.size and not (np.isfinite(x).all() and 0 <= x.min() and x.max() <= 255):
        raise ValueError(
            f"`x` in {str(path)!r} must hold raw pixel values in [0, 255]. "
            f"Received: values from {x.min()} to {x.max()}"
        )
    return x


def _labels(y, path):
    """Returns integer class ids and class names for the labels `y`."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"`y` in {str(path)!r} must be one label per image, shape "
            f"(samples,). Received: y.shape={y.shape}"
        )
    names, ids = np.unique(y, return_inverse=True)
    return ids.astype("int64"), tuple(str(n) for n in names)


# What numpy raises for a file that is no `.npz` archive, or a damaged one.
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _unreadable(path, error):
    return ValueError(
        f"`path` must be a .npz file written by `np.savez`. Received: "
        f"path={str(path)!r}, which cannot be read (truncated or not a .npz "
        f"file?): {type(error).__name__}: {error}"
    )


def _read(path):
    """Returns the arrays `x` and `y` of the `.npz` file at `path`, or raises."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except _READ_ERRORS as error:
        # Not a zip archive, so numpy took it for a pickle; say nothing of
        # numpy's advice to allow pickle, which would run code from the file.
        if "allow_pickle" in str(error):
            error = ValueError("neither a zip archive nor a .npy array")
        raise _unreadable(path, error) from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise ValueError(
            f"`path` must be a .npz file with arrays 'x' and 'y'. Received: "
            f"path={str(path)!r}, which holds one array (written by `np.save`?); "
            "write both with `np.savez(path, x=images, y=labels)`"
        )
    with arrays:
        missing = {"x", "y"} - set(arrays.files)
        if missing:
            raise ValueError(
                f"The .npz file must hold arrays 'x' and 'y'. Received: "
                f"{str(path)!r} with {sorted(arrays.files)}"
            )
        try:
            return arrays["x"], arrays["y"]
        except _READ_ERRORS as error:
            if "allow_pickle" not in str(error):
                raise _unreadable(path, error) from error
            # Images of mismatched sizes make an object array, which needs
            # pickle to load; pickle runs code, so it stays off.
            raise ValueError(
                f"`x` and `y` in {str(path)!r} must be arrays of numbers or "
                "strings, `x` of equal-sized images. Received: an object array "
                "(images of mismatched sizes?); resize them to one size first"
            ) from None


def load_npz(path):
    """Loads images `x` and labels `y` from a `.npz` file.

    Args:
        path: string or `pathlib.Path`. A file written by `np.savez` with
            `x` of shape `(samples, height, width[, channels])`, raw pixels in
            [0, 255] with 1 or 3 channels, and `y` of shape `(samples,)`, any
            labels (ints or strings); their sorted unique values are the
            classes.

    Returns:
        `ImageDataset`.

    Example:

    >>> np.savez("tiny.npz", x=np.zeros((4, 8, 8), "uint8"), y=[0, 1, 0, 1])
    >>> from keras_globalpool.cli import data as kgp_data
    >>> kgp_data.load_npz("tiny.npz").x.shape
    (4, 8, 8, 1)
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(
            f"`path` must be an existing .npz file. Received: path={str(path)!r}"
        )
    x, y = _read(path)
    x = _images(x, path)
    y, class_names = _labels(y, path)
    if len(y) != len(x):
        raise ValueError(
            f"`x` and `y` in {str(path)!r} must have one label per image. "
            f"Received: {len(x)} images and {len(y)} labels"
        )
    return ImageDataset(
        x=x, y=y, class_names=class_names, description=f"npz file {str(path)!r}"
    )
