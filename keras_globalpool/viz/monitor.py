"""`PooledFeatureMonitor`: statistics of the pooled features during `fit`."""

import keras
import numpy as np
from keras import ops

from keras_globalpool.arguments import check_positive_int
from keras_globalpool.pooler import find_pooling_layer
from keras_globalpool.viz.pooling_graph import model_input

STATISTICS = ("mean", "std", "dead_fraction", "saturated_fraction")


def pooled_feature_stats(pooled, saturation_tolerance=1e-3):
    """Health statistics of pooled features computed on one batch.

    Args:
        pooled: array of shape `(batch, channels)`, at least two images.
        saturation_tolerance: float >= 0. How much, relative to its largest
            magnitude, a channel may vary across the batch and still count
            as saturated. Defaults to `1e-3`.

    Returns:
        dict with:
        - `"mean"`, `"std"`: over every value of the batch and channels.
        - `"dead_fraction"`: the fraction of channels that pool to exactly
          0 for every image, such as a ReLU channel that never fires.
        - `"saturated_fraction"`: the fraction of channels, dead ones
          excluded, whose value is the same for every image:
          `max - min <= saturation_tolerance * max(|value|)` over the batch.
          Such a channel is stuck (a ReLU always on at one level, a sigmoid
          at its ceiling, a bias with no input left) and tells the head
          nothing about the image.

    Example:

    >>> pooled_feature_stats(np.array([[0.0, 2.0, 1.0], [0.0, 2.0, 3.0]]))
    {'mean': 1.333..., 'std': 1.105..., 'dead_fraction': 0.333...,
     'saturated_fraction': 0.333...}
    """
    pooled = np.asarray(pooled, dtype="float64")
    magnitude = np.abs(pooled).max(axis=0)
    spread = pooled.max(axis=0) - pooled.min(axis=0)
    dead = magnitude == 0
    saturated = ~dead & (spread <= saturation_tolerance * magnitude)
    return {
        "mean": float(pooled.mean()),
        "std": float(pooled.std()),
        "dead_fraction": float(dead.mean()),
        "saturated_fraction": float(saturated.mean()),
    }


class PooledFeatureMonitor(keras.callbacks.Callback):
    """Logs the health of the pooled features on a fixed batch, per epoch.

    A hook on the pooling layer, so that problems show early:
    channels that died or got stuck, features that shrink or blow up. At the
    end of every `every_n_epochs`-th epoch (the first included) this
    callback runs the model up to its pooling layer on `images` and adds
    `pooled_feature_stats` to the epoch's `logs` as `{prefix}mean`,
    `{prefix}std`, `{prefix}dead_fraction` and `{prefix}saturated_fraction`.
    On the other epochs it logs NaN, so every epoch has the keys and
    History's lists stay aligned with the epochs. Keras's own History
    always sees the keys; list this callback before `CSVLogger` or
    `TensorBoard` in `callbacks` so they do too.

    Args:
        images: array. A fixed batch of at least two validation images, as
            the model takes them.
        every_n_epochs: int >= 1. Compute on epochs 1, N + 1, 2N + 1, ...
            Defaults to `1`.
        layer_name: optional string. The layer whose output to monitor.
            Defaults to the layer named `"pooler"`, else the model's only
            global-pooling layer (keras-globalpool's or Keras's).
        saturation_tolerance: float >= 0. See `pooled_feature_stats`.
            Defaults to `1e-3`.
        prefix: string. Prepended to the log keys. Defaults to `"pooled_"`.
        verbose: int, 0 or 1. With 1, print one line per computed epoch.
            Defaults to `0`.

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=4)])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(32, 32, 3))
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> x, y = np.random.rand(8, 32, 32, 3) * 255, np.arange(8) % 3
    >>> monitor = kgp.PooledFeatureMonitor(x[:4], verbose=1)
    >>> history = model.fit(x, y, epochs=3, callbacks=[monitor], verbose=0)
    Epoch 1: pooler features mean=... std=... dead=...% saturated=...%
    Epoch 2: pooler features mean=... std=... dead=...% saturated=...%
    Epoch 3: pooler features mean=... std=... dead=...% saturated=...%
    >>> len(history.history["pooled_dead_fraction"])
    3
    """

    def __init__(
        self,
        images,
        every_n_epochs=1,
        layer_name=None,
        saturation_tolerance=1e-3,
        prefix="pooled_",
        verbose=0,
    ):
        super().__init__()
        images = np.asarray(images)
        if images.ndim < 2 or len(images) < 2:
            raise ValueError(
                "`images` must be a batch of at least two images. "
                f"Received: images.shape={images.shape}"
            )
        check_positive_int("every_n_epochs", every_n_epochs)
        if not saturation_tolerance >= 0:
            raise ValueError(
                "`saturation_tolerance` must be a number >= 0. "
                f"Received: saturation_tolerance={saturation_tolerance!r}"
            )
        self.images = images
        self.every_n_epochs = every_n_epochs
        self.layer_name = layer_name
        self.saturation_tolerance = saturation_tolerance
        self.prefix = prefix
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self._pool = find_pooling_layer(self.model, self.layer_name)
        self._feature_model = keras.Model(model_input(self.model), self._pool.output)

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every_n_epochs:
            stats = dict.fromkeys(STATISTICS, float("nan"))
        else:
            pooled = self._feature_model(self.images, training=False)
            pooled = ops.convert_to_numpy(pooled).reshape(len(self.images), -1)
            stats = pooled_feature_stats(pooled, self.saturation_tolerance)
            if self.verbose:
                print(
                    f"Epoch {epoch + 1}: {self._pool.name} features "
                    f"mean={stats['mean']:.4g} std={stats['std']:.4g} "
                    f"dead={stats['dead_fraction']:.1%} "
                    f"saturated={stats['saturated_fraction']:.1%}"
                )
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in stats.items()})
