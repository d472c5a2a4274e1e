"""Cached training from any `model.fit` input: arrays, datasets, generators."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from cached_cases import compiled, random_features

import keras_globalpool as kgp
from keras_globalpool.cached import inputs

SAMPLES, BATCH = 40, 8
KINDS = ["arrays", "dataset_xy", "dataset_xysw", "pydataset", "generator"]


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (SAMPLES, 8, 8, 1)).astype("float32")
    y = np.arange(SAMPLES) % 3
    sample_weight = rng.uniform(0.5, 2.0, SAMPLES).astype("float32")
    return x, y, sample_weight


def _classifier(seed=0):
    backbone = random_features()
    keras.utils.set_random_seed(seed)
    model = kgp.build_classifier(
        backbone, 3, input_shape=(8, 8, 1), pooling="attention", dropout=0.0
    )
    return compiled(model)


class _Batches(keras.utils.PyDataset):
    def __init__(self, *arrays):
        super().__init__()
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays[0]) // BATCH

    def __getitem__(self, index):
        return tuple(a[index * BATCH : (index + 1) * BATCH] for a in self.arrays)


def _input(kind, with_weights=True):
    """`kind`'s form of the data, as `fit` arguments: (x, y, sample_weight)."""
    x, y, sw = _data()
    sw = sw if with_weights else None
    arrays = (x, y) if sw is None else (x, y, sw)
    if kind == "arrays":
        return x, y, sw
    if kind == "dataset_xy":
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), None, None
    if kind == "dataset_xysw":
        return tf.data.Dataset.from_tensor_slices(arrays).batch(BATCH), None, None
    if kind == "pydataset":
        return _Batches(*arrays), None, None
    generator = (
        tuple(a[i : i + BATCH] for a in arrays) for i in range(0, SAMPLES, BATCH)
    )
    return generator, None, None


def _has_weights(kind):
    return kind not in ("dataset_xy",)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_features_equal_for_each_input_kind(kind):
    model = _classifier()
    x, y, sw = _data()
    expected = kgp.cache_features(model, x, y, sample_weight=sw, batch_size=BATCH)
    data, data_y, data_sw = _input(kind)
    cached = kgp.cache_features(
        model, data, data_y, sample_weight=data_sw, batch_size=BATCH
    )
    np.testing.assert_array_equal(cached.maps, expected.maps)
    assert cached.maps.dtype == expected.maps.dtype
    np.testing.assert_array_equal(cached.y, y)
    if _has_weights(kind):
        np.testing.assert_array_equal(cached.sample_weight, sw)
    else:
        assert cached.sample_weight is None


@pytest.mark.parametrize("kind", KINDS)
def test_fit_cached_trains_the_same_head_for_each_input_kind(kind):
    x, y, sw = _data()
    sw = sw if _has_weights(kind) else None
    expected, model = _classifier(), _classifier()
    kgp.fit_cached(
        expected, x, y, sample_weight=sw, batch_size=BATCH, epochs=2, shuffle=False,
        verbose=0,
    )  # fmt: skip
    data, data_y, data_sw = _input(kind)
    kgp.fit_cached(
        model, data, data_y, sample_weight=data_sw, batch_size=BATCH, epochs=2,
        shuffle=False, verbose=0,
    )  # fmt: skip
    assert int(model.optimizer.iterations) == 2 * SAMPLES // BATCH
    for e, a in zip(expected.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_sample_weights_change_the_training():
    x, y, sw = _data()
    weighted, plain = _classifier(), _classifier()
    dataset = tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(BATCH)
    kgp.fit_cached(weighted, dataset, epochs=1, shuffle=False, verbose=0)
    kgp.fit_cached(plain, x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    weights = zip(weighted.get_weights(), plain.get_weights(), strict=True)
    assert any(not np.allclose(w, p) for w, p in weights)


def test_cached_labels_and_weights_are_used_by_fit_cached():
    x, y, sw = _data()
    expected, model = _classifier(), _classifier()
    kgp.fit_cached(
        expected, x, y, sample_weight=sw, batch_size=BATCH, shuffle=False, verbose=0
    )
    cached = kgp.cache_features(model, x, y, sample_weight=sw)
    kgp.fit_cached(model, cached, batch_size=BATCH, shuffle=False, verbose=0)
    for e, a in zip(expected.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_validation_data_of_each_kind_gives_the_same_val_loss(kind):
    x, y, sw = _data()
    expected, model = _classifier(), _classifier()
    validation = (x, y, sw) if _has_weights(kind) else (x, y)
    history = kgp.fit_cached(
        expected, x, y, batch_size=BATCH, shuffle=False, verbose=0,
        validation_data=validation,
    )  # fmt: skip
    data, _, _ = _input(kind)
    if kind == "arrays":
        data = validation
    actual = kgp.fit_cached(
        model, x, y, batch_size=BATCH, shuffle=False, verbose=0, validation_data=data
    )
    np.testing.assert_allclose(
        actual.history["val_loss"], history.history["val_loss"], rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["dataset", "pydataset", "generator"])
def test_images_without_labels_are_refused_by_fit_cached(kind):
    x, _, _ = _data()
    if kind == "dataset":
        data = tf.data.Dataset.from_tensor_slices(x).batch(BATCH)
    elif kind == "pydataset":
        data = _Batches(x)
    else:
        data = ((x[i : i + BATCH],) for i in range(0, SAMPLES, BATCH))
    with pytest.raises(ValueError, match="needs labels.*Received: .*1 tensor"):
        kgp.fit_cached(_classifier(), data, verbose=0)


def test_images_without_labels_are_cached_for_prediction():
    model = _classifier()
    x, _, _ = _data()
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(BATCH)
    cached = kgp.cache_features(model, dataset)
    assert cached.y is None and cached.sample_weight is None
    np.testing.assert_allclose(
        kgp.predict_cached(model, dataset), kgp.predict_cached(model, x), atol=1e-6
    )


def test_arrays_without_labels_are_refused_by_fit_cached():
    x, _, _ = _data()
    with pytest.raises(ValueError, match="needs labels"):
        kgp.fit_cached(_classifier(), x, verbose=0)


@pytest.mark.parametrize("argument", ["y", "sample_weight"])
def test_labels_beside_a_dataset_are_refused_as_keras_does(argument):
    x, y, _ = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    with pytest.raises(ValueError, match="should not be passed"):
        kgp.cache_features(_classifier(), dataset, **{argument: y})


def test_reader_streams_one_batch_at_a_time():
    pulled = []

    def images():
        for i in range(1000):  # Would be 1000 batches if all were held.
            pulled.append(i)
            yield np.full((BATCH, 8, 8, 1), i, "float32"), np.zeros(BATCH)

    source = inputs.BatchSource(images(), steps=3)
    for step, (x, y, sw) in enumerate(source):
        assert y.shape == (BATCH,)
        assert pulled[-1] == step  # Not read ahead.
        assert x.shape == (BATCH, 8, 8, 1) and sw is None
    assert pulled == [0, 1, 2]


def test_unrecognized_input_is_refused():
    with pytest.raises(ValueError, match="Unrecognized data type"):
        inputs.BatchSource("images.png")
