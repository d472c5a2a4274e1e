"""How `compare` trains and scores one model: on images, or on cached features.

Images in memory (`ImageDataset`) go to Keras as arrays. A folder that
streams (`FileImageDataset`) goes as an `ImageBatches` `PyDataset`, which
decodes one batch at a time, to `model.fit` and `model.predict` or, once,
through the frozen backbone to `kgp.cache_features`.
"""

import pathlib
import time

import numpy as np

from keras_globalpool.cached import (
    CachedFeatures,
    cache_features,
    fit_cached,
    predict_cached,
)
from keras_globalpool.cli.data.stream import FileImageDataset, ImageBatches, fingerprint

# Images per call of `model.predict` on the test images.
PREDICT_BATCH = 256


def _streams(dataset):
    return isinstance(dataset, FileImageDataset)


class ImageTrainer:
    """Trains the whole model with `model.fit` on the images."""

    description = "model.fit on the images, every epoch through the whole model"

    def __init__(self, train, test, settings):
        self.train, self.test, self.settings = train, test, settings
        self.epochs, self.batch_size = settings.epochs, settings.batch_size
        self.cache_seconds = self.cache_reused = None

    def open(self, build_model):
        """Runs once, before the run writes any folder; here there is nothing to do.

        Args:
            build_model: callable returning a compiled model of the run.
        """

    def prepare(self, progress=None):
        """Runs once before any training; here there is nothing to do.

        Args:
            progress: optional rich `Progress`.
        """

    def fit(self, model, callbacks):
        x, y, kwargs = self._train_inputs()
        self._fit(
            model, x, y, epochs=self.epochs, callbacks=callbacks, verbose=0, **kwargs
        )

    def _train_inputs(self):
        """`(x, y, fit arguments)` of the training images."""
        if _streams(self.train):
            # Shuffled per epoch from the run's seed, which set NumPy's.
            seed = int(np.random.randint(2**31))
            batches = ImageBatches(self.train, self.batch_size, seed=seed)
            return batches, None, {"shuffle": False}
        return self.train.x, self.train.y, {"batch_size": self.batch_size}

    def _fit(self, model, x, y, **kwargs):
        model.fit(x, y, **kwargs)

    def predict_test(self, model):
        if _streams(self.test):
            batches = ImageBatches(self.test, PREDICT_BATCH, labels=False)
            return model.predict(batches, verbose=0)
        return model.predict(self.test.x, batch_size=PREDICT_BATCH, verbose=0)

    def accuracy(self, model):
        """The share of test images whose most probable class is right."""
        predicted = np.argmax(self.predict_test(model), axis=-1)
        return float(np.mean(predicted == self.test.y))


class CachedTrainer(ImageTrainer):
    """Trains the head with `kgp.fit_cached` on feature maps cached once.

    The backbone is frozen and has the same weights in every model of the
    comparison, so the maps of the first model serve every head and seed;
    the time to compute them is reported once, apart from training. With
    `settings.cache_dir`, the maps of each split stay in a folder named
    after the split and its images, and a later run reuses them when the
    backbone's weights match.
    """

    description = (
        "kgp.fit_cached: the frozen backbone runs once, the head trains on "
        "its cached feature maps"
    )

    def __init__(self, train, test, settings):
        super().__init__(train, test, settings)
        self._train_maps = self._test_maps = None

    def open(self, build_model):
        """Builds the first model and opens the caches in `cache_dir` to reuse.

        Raises:
            ValueError: a cache there was made by another backbone, or is
                damaged, and `overwrite_cache` is off.
        """
        self._model = build_model()
        splits = {"train": self.train, "test": self.test}
        self._folders = {
            name: self._cache_folder(name, data) for name, data in splits.items()
        }
        self._reused = {
            name: self._reuse(folder) for name, folder in self._folders.items()
        }

    def prepare(self, progress=None):
        """Caches the maps of each split the backbone has not cached yet."""
        splits = {"train": self.train, "test": self.test}
        task = None
        if progress is not None:
            fresh = sum(
                len(splits[name].y)
                for name, maps in self._reused.items()
                if maps is None
            )
            if fresh:
                task = progress.add_task("caching features", total=fresh)
            else:
                progress.console.print(
                    f"Features reused from --cache-dir {self.settings.cache_dir}"
                )
        start = time.perf_counter()
        maps = {
            name: self._reused[name]
            or self._cache(splits[name], self._folders[name], progress, task)
            for name in splits
        }
        self.cache_seconds = time.perf_counter() - start
        self._train_maps, self._test_maps = maps["train"], maps["test"]
        self.cache_reused = all(m is not None for m in self._reused.values())
        self._model = self._reused = None

    def _cache_folder(self, split, data):
        """Where the maps of `split` go under `settings.cache_dir`, or `None`."""
        if self.settings.cache_dir is None:
            return None
        # The images' digest names the folder: other images, another split or
        # size never meet this cache, while other weights are refused on load.
        return (
            pathlib.Path(self.settings.cache_dir) / f"{split}-{fingerprint(data)[:16]}"
        )

    def _reuse(self, folder):
        """The cache in `folder` when it holds one and may be reused, else `None`."""
        if folder is None or self.settings.overwrite_cache or not folder.exists():
            return None
        try:
            return CachedFeatures.load(folder, model=self._model, lazy=True)
        except ValueError as error:
            raise ValueError(
                f"The feature cache in `cache_dir` (--cache-dir) at {str(folder)!r} "
                f"cannot serve this run: {error} It holds the features of another "
                "backbone, or is damaged. Pass --overwrite-cache to replace it, or "
                "another --cache-dir. "
                f"Received: cache_dir={self.settings.cache_dir!r}"
            ) from error

    def _cache(self, data, folder, progress, task):
        kwargs = {
            "batch_size": self.batch_size,
            "memory_budget": self.settings.memory_budget,
            "cache_dir": folder,
            "overwrite": self.settings.overwrite_cache,
        }
        if _streams(data):
            on_batch = (
                None if task is None else lambda rows: progress.advance(task, rows)
            )
            batches = ImageBatches(data, self.batch_size, on_batch=on_batch)
            return cache_features(self._model, batches, **kwargs)
        maps = cache_features(self._model, data.x, data.y, **kwargs)
        if task is not None:
            progress.advance(task, len(data.y))
        return maps

    def _train_inputs(self):
        kwargs = {
            "batch_size": self.batch_size,
            "memory_budget": self.settings.memory_budget,
        }
        return self._train_maps, self.train.y, kwargs

    def _fit(self, model, x, y, **kwargs):
        fit_cached(model, x, y, **kwargs)

    def predict_test(self, model):
        return predict_cached(model, self._test_maps, batch_size=PREDICT_BATCH)


# Keyed by whether the backbone is frozen.
TRAINERS = {False: ImageTrainer, True: CachedTrainer}
