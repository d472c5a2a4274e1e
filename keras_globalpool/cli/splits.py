"""The data of `compare`: loaded, checked, fitted to the backbone and split."""

import functools

from keras_globalpool.cli import data as kgp_data
from keras_globalpool.cli.backbones import SMALL_CNN
from keras_globalpool.cli.data.dataset import MIN_PER_CLASS
from keras_globalpool.cli.data.stream import FileImageDataset, check_decodes
from keras_globalpool.cli.data.tasks import load_task


def load_splits(settings, progress=None):
    """Loads, checks, fits to the backbone and splits the data.

    A folder streams: its images are listed, decoded once to find a broken
    file before anything else runs, and decoded again a batch at a time
    whenever they are read.

    Args:
        settings: `CompareSettings`.
        progress: optional rich `Progress`, to show the check of a folder.

    Returns:
        `(train, test)`, both `ImageDataset`s or, for a folder, both
        `FileImageDataset`s.
    """
    if settings.task is None:
        dataset = kgp_data.load(
            settings.data, image_size=settings.image_size, stream=True
        )
    else:
        dataset = load_task(settings.task)
    if settings.max_samples is not None:
        least = MIN_PER_CLASS * dataset.num_classes
        if settings.max_samples < least:
            raise ValueError(
                f"`max_samples` must keep {MIN_PER_CLASS} images per class, "
                f"{least} for {dataset.num_classes} classes. "
                f"Received: max_samples={settings.max_samples}"
            )
        dataset = kgp_data.stratified_subset(dataset, settings.max_samples)
    kgp_data.check_enough_samples(dataset)
    if isinstance(dataset, FileImageDataset):
        on_batch = None
        if progress is not None:
            task = progress.add_task("checking images", total=len(dataset.y))
            on_batch = functools.partial(progress.advance, task)
        check_decodes(dataset, on_batch)
    if settings.image_size is not None:
        dataset = kgp_data.resize(dataset, settings.image_size)
    if settings.backbone != SMALL_CNN:
        dataset = kgp_data.to_rgb(dataset)
    return kgp_data.stratified_split(dataset, settings.test_fraction)
