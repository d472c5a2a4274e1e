"""Images from a folder, decoded a batch at a time instead of all at once.

`load_directory` holds every image in memory: 60,000 images at 96x96x3 take
1.7 GB. `FileImageDataset` holds the file list and the labels only, and
decodes a batch when it is read, exactly as `load_directory` decodes it, so
memory stays bounded whatever the folder's size. It splits and subsets like
an `ImageDataset` (`take`), and `ImageBatches` reads it as a
`keras.utils.PyDataset` for `model.fit`, `model.predict` and
`kgp.cache_features`.
"""

import dataclasses
import hashlib
import math

import keras
import numpy as np

from keras_globalpool.cli.data.dataset import ImageDataset
from keras_globalpool.cli.data.directory import _decode, scan_directory

# Images decoded per call when a batch size is not given.
READ_BATCH = 64


@dataclasses.dataclass(frozen=True)
class FileImageDataset:
    """Image files and integer labels; the pixels are decoded when read.

    Args:
        files: tuple of `pathlib.Path`, one per image.
        y: int array of shape `(samples,)`, class ids in
            `[0, len(class_names))`.
        class_names: tuple of strings, one per class.
        image_size: `(height, width)`. Each image is resized to it on
            decoding where its own size differs.
        channels: int, 1 or 3. The channels decoded.
        description: string. Where the data came from, for reports.
        rgb: bool. Repeat a single decoded channel three times. Defaults to
            `False`.

    Example:

    >>> import os
    >>> for name in ("daisy", "rose"):
    ...     os.makedirs(f"flowers/{name}", exist_ok=True)
    ...     for index in range(2):
    ...         keras.utils.save_img(
    ...             f"flowers/{name}/{index}.png", np.zeros((8, 8, 3), "uint8"))
    >>> from keras_globalpool.cli.data.stream import stream_directory
    >>> data = stream_directory("flowers/", image_size=4)
    >>> data.class_names, data.image_shape, len(data.take([0, 3]).files)
    (('daisy', 'rose'), (4, 4, 3), 2)
    >>> [batch.shape for batch in data.batches(3)]
    [(3, 4, 4, 3), (1, 4, 4, 3)]
    """

    files: tuple
    y: np.ndarray
    class_names: tuple
    image_size: tuple
    channels: int
    description: str = ""
    rgb: bool = False

    def __post_init__(self):
        if self.y.shape != (len(self.files),):
            raise ValueError(
                f"`y` must hold one label per file, shape ({len(self.files)},). "
                f"Received: y.shape={self.y.shape}"
            )

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        return (*self.image_size, 3 if self.rgb else self.channels)

    def take(self, indices):
        """Returns the images at `indices` as a new `FileImageDataset`."""
        indices = np.asarray(indices, dtype="int64").reshape(-1)
        files = tuple(self.files[index] for index in indices)
        return dataclasses.replace(self, files=files, y=self.y[indices])

    def to_rgb(self):
        """This dataset with a grayscale channel repeated three times on reading."""
        if self.image_shape[-1] == 3:
            return self
        return dataclasses.replace(
            self, rgb=True, description=f"{self.description}, gray to RGB"
        )

    def read(self, start=0, stop=None):
        """Decodes the images `start` to `stop` into one `uint8` array."""
        files = self.files[start:stop]
        if not files:
            return np.zeros((0, *self.image_shape), "uint8")
        x = np.stack([_decode(f, self.image_size, self.channels) for f in files])
        return np.repeat(x, 3, axis=-1) if x.shape[-1] != self.image_shape[-1] else x

    def batches(self, batch_size=READ_BATCH):
        """Yields the images in order, `batch_size` at a time, as `uint8` arrays."""
        for start in range(0, len(self.files), batch_size):
            yield self.read(start, start + batch_size)

    def in_memory(self):
        """Every image decoded, as an `ImageDataset`; for a few images only."""
        return ImageDataset(self.read(), self.y, self.class_names, self.description)


def stream_directory(path, image_size=None):
    """Lists the images under `path/<class name>/`, to be decoded when read.

    The classes, checks, sizes and channels of `load_directory`, from the
    files' headers only; reading the result gives `load_directory`'s pixels,
    bit for bit.

    Args:
        path: string or `pathlib.Path`. A folder with at least 2 class
            subfolders of `.bmp`, `.gif`, `.jpeg`, `.jpg` or `.png` files.
        image_size: optional int or `(height, width)`. Resize every image to
            this size. Defaults to `None`: all images must share one size.

    Returns:
        `FileImageDataset`.
    """
    listing = scan_directory(path, image_size)
    return FileImageDataset(
        files=listing.files,
        y=listing.y,
        class_names=listing.class_names,
        image_size=listing.image_size,
        channels=listing.channels,
        description=listing.description,
    )


def sample_shape(dataset):
    """The shape of one input of `dataset`, an image or a bag, without decoding."""
    if isinstance(dataset, FileImageDataset):
        return dataset.image_shape
    return tuple(dataset.x.shape[1:])


def in_memory(dataset):
    """`dataset` as an `ImageDataset`: decoded if it streams, else itself."""
    if isinstance(dataset, FileImageDataset):
        return dataset.in_memory()
    return dataset


def head(dataset, count):
    """The first `count` images of `dataset` (fewer if it is smaller), decoded."""
    return in_memory(dataset.take(np.arange(min(count, len(dataset.y))))).x


def image_batches(dataset, batch_size):
    """Yields the images of `dataset`, in memory or streamed, `batch_size` at a time."""
    if isinstance(dataset, FileImageDataset):
        yield from dataset.batches(batch_size)
        return
    for start in range(0, len(dataset.x), batch_size):
        yield dataset.x[start : start + batch_size]


def check_decodes(dataset, on_batch=None):
    """Decodes every image once, and keeps none, so a broken file stops the run first.

    The header scan opens every file but cannot see a file cut short; this
    pass can, before any folder is written or any model trains.

    Args:
        dataset: `FileImageDataset`.
        on_batch: optional function of the number of images just decoded.
    """
    for batch in dataset.batches(READ_BATCH):
        if on_batch is not None:
            on_batch(len(batch))


def fingerprint(dataset):
    """A sha256 hex digest of what the images of `dataset` are.

    For files: each file's path, size and modification time, its label,
    and the decoded shape; for images in memory, their bytes and labels.
    Two runs on the same files, split and size give the same digest.

    Args:
        dataset: `FileImageDataset` or `ImageDataset`.

    Returns:
        string of 64 hex digits.
    """
    digest = hashlib.sha256()
    digest.update(repr((type(dataset).__name__, dataset.image_shape)).encode())
    digest.update(np.ascontiguousarray(dataset.y, "int64").tobytes())
    if isinstance(dataset, FileImageDataset):
        for path in dataset.files:
            stat = path.stat()
            digest.update(repr((str(path), stat.st_size, stat.st_mtime_ns)).encode())
    else:
        digest.update(np.ascontiguousarray(dataset.x).tobytes())
    return digest.hexdigest()


class ImageBatches(keras.utils.PyDataset):
    """A `FileImageDataset` as a `keras.utils.PyDataset` of decoded batches.

    Args:
        dataset: `FileImageDataset`.
        batch_size: int. Images per batch.
        labels: bool. Yield `(images, labels)`; else the images alone.
            Defaults to `True`.
        seed: optional int. Shuffle the images, in a new order after each
            epoch, from this seed. Defaults to `None`: in order.
        on_batch: optional function of the number of images in each batch
            read, to show progress.
    """

    def __init__(self, dataset, batch_size, labels=True, seed=None, on_batch=None):
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size
        self.labels, self.seed, self.on_batch = labels, seed, on_batch
        self._epoch = 0
        self._order = self._epoch_order()

    def _epoch_order(self):
        samples = len(self.dataset.y)
        if self.seed is None:
            return np.arange(samples)
        return np.random.default_rng([self.seed, self._epoch]).permutation(samples)

    def __len__(self):
        return math.ceil(len(self.dataset.y) / self.batch_size)

    def __getitem__(self, index):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        if self.seed is None:
            images = self.dataset.read(rows[0], rows[-1] + 1)
        else:
            images = self.dataset.take(rows).read()
        if self.on_batch is not None:
            self.on_batch(len(rows))
        return (images, self.dataset.y[rows]) if self.labels else images

    def on_epoch_end(self):
        self._epoch += 1
        self._order = self._epoch_order()
