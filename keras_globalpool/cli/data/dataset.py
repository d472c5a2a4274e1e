"""`ImageDataset`: images and integer labels in memory, and their stratified split."""

import dataclasses

import numpy as np

# A stratified split puts at least one image of each class on each side.
MIN_PER_CLASS = 2


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images and labels held in memory as NumPy arrays.

    Args:
        x: array of shape `(samples, height, width, channels)`, raw pixel
            values in [0, 255] (`uint8` where the source allows it).
        y: int array of shape `(samples,)`, class ids in
            `[0, len(class_names))`.
        class_names: tuple of strings, one per class.
        description: string. Where the data came from, for reports.

    Example:

    >>> from keras_globalpool.cli import data as kgp_data
    >>> data = kgp_data.ImageDataset(
    ...     np.zeros((4, 8, 8, 1), "uint8"), np.array([0, 1, 0, 1]), ("a", "b"))
    >>> data.num_classes, data.image_shape
    (2, (8, 8, 1))
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple
    description: str = ""

    def __post_init__(self):
        if self.x.ndim != 4:
            raise ValueError(
                "`x` must have shape (samples, height, width, channels). "
                f"Received: x.shape={self.x.shape}"
            )
        if self.y.shape != (len(self.x),):
            raise ValueError(
                f"`y` must hold one label per image, shape ({len(self.x)},). "
                f"Received: y.shape={self.y.shape}"
            )

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        return tuple(self.x.shape[1:])

    def take(self, indices):
        """Returns the images at `indices` as a new `ImageDataset`."""
        return dataclasses.replace(self, x=self.x[indices], y=self.y[indices])


def check_enough_samples(dataset):
    """Raises a `ValueError` unless `dataset` can be split for training and testing.

    It needs 2 classes or more and `MIN_PER_CLASS` (2) images of each, one
    for each side of `stratified_split`. How many seeds a run trains does
    not matter: every seed trains on the same split.

    Args:
        dataset: `ImageDataset`.

    Returns:
        `dataset`, unchanged.

    Example:

    >>> from keras_globalpool.cli import data as kgp_data
    >>> data = kgp_data.ImageDataset(
    ...     np.zeros((4, 8, 8, 1), "uint8"), np.array([0, 1, 0, 1]), ("a", "b"))
    >>> kgp_data.check_enough_samples(data) is data
    True
    """
    if dataset.num_classes < 2:
        raise ValueError(
            "A classifier needs at least 2 classes. "
            f"Received: {dataset.num_classes} class(es) in {dataset.description!r}"
        )
    counts = np.bincount(dataset.y, minlength=dataset.num_classes)
    sparse = {
        name: int(count)
        for name, count in zip(dataset.class_names, counts, strict=True)
        if count < MIN_PER_CLASS
    }
    if sparse:
        raise ValueError(
            f"Every class needs at least {MIN_PER_CLASS} samples, one for "
            f"training and one for testing. Received: {sparse}"
        )
    return dataset


def stratified_split(dataset, test_fraction=0.2, seed=0):
    """Splits `dataset` into train and test sets with the same class mix.

    Args:
        dataset: `ImageDataset`.
        test_fraction: float in (0, 1). The share of images held out for
            testing. Defaults to `0.2`.
        seed: int. Fixes which images go where. Defaults to `0`.

    Returns:
        Tuple `(train, test)` of `ImageDataset`s.

    Example:

    >>> from keras_globalpool.cli import data as kgp_data
    >>> data = kgp_data.load_digits()
    >>> train, test = kgp_data.stratified_split(data, test_fraction=0.2)
    >>> len(train.y), len(test.y)
    (1438, 359)
    """
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(
            "`test_fraction` must be in (0, 1). "
            f"Received: test_fraction={test_fraction!r}"
        )
    check_enough_samples(dataset)
    # sklearn needs one test image per class; give it that many at least.
    test_size = max(round(test_fraction * len(dataset.y)), dataset.num_classes)
    train_idx, test_idx = train_test_split(
        np.arange(len(dataset.y)),
        test_size=test_size,
        stratify=dataset.y,
        random_state=seed,
    )
    return dataset.take(np.sort(train_idx)), dataset.take(np.sort(test_idx))


def stratified_subset(dataset, size, seed=0):
    """Returns at most `size` images of `dataset`, keeping the class mix.

    Args:
        dataset: `ImageDataset`.
        size: int. The most images to keep.
        seed: int. Fixes which images are kept. Defaults to `0`.

    Returns:
        An `ImageDataset`; `dataset` itself when it is no larger than `size`.
    """
    from sklearn.model_selection import train_test_split

    if len(dataset.y) <= size:
        return dataset
    check_enough_samples(dataset)
    keep, _ = train_test_split(
        np.arange(len(dataset.y)),
        train_size=max(size, dataset.num_classes),
        stratify=dataset.y,
        random_state=seed,
    )
    return dataset.take(np.sort(keep))
