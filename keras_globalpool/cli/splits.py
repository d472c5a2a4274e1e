"""The data of `compare`: loaded, checked, fitted to the backbone and split."""

from keras_globalpool.cli import data as kgp_data
from keras_globalpool.cli.backbones import SMALL_CNN
from keras_globalpool.cli.data.dataset import MIN_PER_CLASS
from keras_globalpool.cli.data.tasks import load_task


def load_splits(settings):
    """Loads, checks, fits to the backbone and splits the data.

    Returns:
        `(train, test)` `ImageDataset`s.
    """
    if settings.task is None:
        dataset = kgp_data.load(settings.data, image_size=settings.image_size)
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
    if settings.image_size is not None:
        dataset = kgp_data.resize(dataset, settings.image_size)
    if settings.backbone != SMALL_CNN:
        dataset = kgp_data.to_rgb(dataset)
    return kgp_data.stratified_split(dataset, settings.test_fraction)
