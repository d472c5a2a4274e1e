"""How `compare` trains and scores one model: on images, or on cached features."""

import time

import numpy as np

from keras_globalpool.cached import cache_features, fit_cached, predict_cached


class ImageTrainer:
    """Trains the whole model with `model.fit` on the images."""

    description = "model.fit on the images, every epoch through the whole model"

    def __init__(self, train, test, epochs, batch_size):
        self.train, self.test = train, test
        self.epochs, self.batch_size = epochs, batch_size
        self.cache_seconds = None

    def prepare(self, build_model):
        """Runs once before any training; here there is nothing to do.

        Args:
            build_model: callable returning a compiled model of the run.
        """

    def fit(self, model, callbacks):
        self._fit(
            model,
            self._train_inputs(),
            self.train.y,
            epochs=self.epochs,
            batch_size=self.batch_size,
            callbacks=callbacks,
            verbose=0,
        )

    def _train_inputs(self):
        return self.train.x

    def _fit(self, model, x, y, **kwargs):
        model.fit(x, y, **kwargs)

    def predict_test(self, model):
        return model.predict(self.test.x, batch_size=256, verbose=0)

    def accuracy(self, model):
        """The share of test images whose most probable class is right."""
        predicted = np.argmax(self.predict_test(model), axis=-1)
        return float(np.mean(predicted == self.test.y))


class CachedTrainer(ImageTrainer):
    """Trains the head with `kgp.fit_cached` on feature maps cached once.

    The backbone is frozen and has the same weights in every model of the
    comparison, so the maps of the first model serve every head and seed;
    the time to compute them is reported once, apart from training.
    """

    description = (
        "kgp.fit_cached: the frozen backbone runs once, the head trains on "
        "its cached feature maps"
    )

    def __init__(self, train, test, epochs, batch_size):
        super().__init__(train, test, epochs, batch_size)
        self._train_maps = self._test_maps = None

    def prepare(self, build_model):
        model = build_model()
        start = time.perf_counter()
        self._train_maps = cache_features(model, self.train.x, self.batch_size)
        self._test_maps = cache_features(model, self.test.x, self.batch_size)
        self.cache_seconds = time.perf_counter() - start

    def _train_inputs(self):
        return self._train_maps

    def _fit(self, model, x, y, **kwargs):
        fit_cached(model, x, y, **kwargs)

    def predict_test(self, model):
        return predict_cached(model, self._test_maps, batch_size=256)


# Keyed by whether the backbone is frozen.
TRAINERS = {False: ImageTrainer, True: CachedTrainer}
