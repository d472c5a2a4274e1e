"""Tests for `kgp.PooledFeatureMonitor`, inside real `fit` calls."""

import csv

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

KEYS = (
    "pooled_mean",
    "pooled_std",
    "pooled_dead_fraction",
    "pooled_saturated_fraction",
)


def numpy_stats(pooled, tolerance=1e-3):
    """The documented definitions, on a (batch, channels) array."""
    dead = np.all(pooled == 0, axis=0)
    spread = pooled.max(axis=0) - pooled.min(axis=0)
    saturated = ~dead & (spread <= tolerance * np.abs(pooled).max(axis=0))
    return {
        "pooled_mean": pooled.mean(),
        "pooled_std": pooled.std(),
        "pooled_dead_fraction": dead.mean(),
        "pooled_saturated_fraction": saturated.mean(),
    }


class CapturePooled(keras.callbacks.Callback):
    """Records the pooling layer's output on `images` at each epoch's end."""

    def __init__(self, images, layer_name="pooler"):
        super().__init__()
        self.images = images
        self.layer_name = layer_name
        self.pooled = []

    def on_epoch_end(self, epoch, logs=None):
        layer = self.model.get_layer(self.layer_name)
        features = keras.Model(self.model.inputs[0], layer.output)(self.images)
        self.pooled.append(keras.ops.convert_to_numpy(features).astype("float64"))


def data(count=16):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (count, 8, 8, 3)).astype("float32")
    return images, rng.integers(0, 2, count)


def classifier(conv=None):
    inputs = keras.Input((8, 8, 3))
    conv = conv or keras.layers.Conv2D(6, 3, activation="relu")
    x = kgp.GlobalAveragePooling(name="pooler")(conv(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return model


def test_logs_match_numpy_on_the_pooled_features_of_each_epoch():
    keras.utils.set_random_seed(0)
    images, labels = data()
    model = classifier()
    monitor = kgp.PooledFeatureMonitor(images[:6])
    capture = CapturePooled(images[:6])

    history = model.fit(
        images, labels, epochs=3, batch_size=8, verbose=0, callbacks=[monitor, capture]
    )

    for epoch, pooled in enumerate(capture.pooled):
        expected = numpy_stats(pooled)
        for key in KEYS:
            np.testing.assert_allclose(
                history.history[key][epoch], expected[key], rtol=1e-6, atol=1e-12
            )
    # Training moves the features, so each epoch's values are its own.
    assert history.history["pooled_mean"][0] != history.history["pooled_mean"][2]


def test_dead_and_saturated_channels(capsys):
    # Channel 0 never fires (dead), channel 1 is its bias alone (stuck on 2),
    # channels 2 and 3 see the image.
    kernel = np.zeros((1, 1, 3, 4), "float32")
    kernel[0, 0, :, 2:] = [[1.0, -1.0], [0.5, 1.0], [-0.5, 1.0]]
    bias = np.array([-1.0, 2.0, 0.5, 0.5], "float32")
    conv = keras.layers.Conv2D(4, 1, activation="relu", trainable=False)
    model = classifier(conv)
    conv.set_weights([kernel, bias])
    images, labels = data()
    monitor = kgp.PooledFeatureMonitor(images[:8], verbose=1)

    history = model.fit(images, labels, epochs=1, verbose=0, callbacks=[monitor])

    assert history.history["pooled_dead_fraction"] == [0.25]
    assert history.history["pooled_saturated_fraction"] == [0.25]
    line = capsys.readouterr().out.strip()
    assert line.startswith("Epoch 1: pooler features mean=")
    assert line.endswith("dead=25.0% saturated=25.0%")


def test_every_n_epochs_logs_nan_in_between_and_reaches_csv_logger(tmp_path):
    keras.utils.set_random_seed(1)
    images, labels = data()
    model = classifier()
    monitor = kgp.PooledFeatureMonitor(images[:4], every_n_epochs=2, prefix="gap_")
    csv_path = tmp_path / "log.csv"

    history = model.fit(
        images,
        labels,
        epochs=3,
        verbose=0,
        callbacks=[monitor, keras.callbacks.CSVLogger(str(csv_path))],
    )

    means = history.history["gap_mean"]
    assert np.isfinite(means[0]) and np.isnan(means[1]) and np.isfinite(means[2])
    with open(csv_path) as file:
        rows = list(csv.DictReader(file))
    assert {"gap_mean", "gap_dead_fraction", "gap_saturated_fraction"} <= set(rows[0])
    np.testing.assert_allclose(float(rows[2]["gap_std"]), history.history["gap_std"][2])


def two_poolings():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    pooled = keras.layers.Concatenate()(
        [
            keras.layers.GlobalAveragePooling2D(name="avg")(x),
            kgp.GlobalMaxPooling(name="peak")(x),
        ]
    )
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_layer_name_picks_the_layer():
    keras.utils.set_random_seed(2)
    images, labels = data()
    model = two_poolings()
    monitor = kgp.PooledFeatureMonitor(images[:4], layer_name="peak")
    capture = CapturePooled(images[:4], layer_name="peak")

    history = model.fit(
        images, labels, epochs=1, verbose=0, callbacks=[monitor, capture]
    )

    expected = numpy_stats(capture.pooled[0])
    np.testing.assert_allclose(
        history.history["pooled_mean"][0], expected["pooled_mean"], rtol=1e-6
    )


def test_several_poolings_without_a_name_raise():
    images, labels = data()
    monitor = kgp.PooledFeatureMonitor(images[:4])
    with pytest.raises(ValueError, match="several pooling layers.*'avg', 'peak'"):
        two_poolings().fit(images, labels, epochs=1, verbose=0, callbacks=[monitor])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n_epochs": 0}, "Received: every_n_epochs=0"),
        ({"every_n_epochs": 1.5}, "Received: every_n_epochs=1.5"),
        ({"saturation_tolerance": -1.0}, "Received: saturation_tolerance=-1.0"),
        ({"images": np.zeros((1, 8, 8, 3))}, r"Received: images.shape=\(1, 8, 8, 3\)"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"images": np.zeros((4, 8, 8, 3)), **kwargs}
    with pytest.raises(ValueError, match=match):
        kgp.PooledFeatureMonitor(**kwargs)
