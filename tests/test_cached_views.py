"""K augmented views per image in the cache, one view per epoch."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from cached_cases import compiled, random_features

import keras_globalpool as kgp

SAMPLES, BATCH, VIEWS = 24, 8, 3
# What the augmentation adds to the images of each view.
SHIFTS = (0.0, 40.0, -30.0)


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(40, 215, (SAMPLES, 8, 8, 1)).astype("float32")
    return x, np.arange(SAMPLES) % 3


def _classifier(pooling="attention"):
    backbone = random_features()
    keras.utils.set_random_seed(7)
    model = kgp.build_classifier(
        backbone, 3, input_shape=(8, 8, 1), pooling=pooling, dropout=0.0
    )
    return compiled(model, metrics=())


class _ShiftEachPass:
    """An augmentation that adds `SHIFTS[k]` to the images of pass `k`."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        view = self.calls // (SAMPLES // BATCH)
        self.calls += 1
        return images + SHIFTS[view]


@pytest.mark.parametrize("pooling", ["attention", "avg"])
@pytest.mark.parametrize("where", ["memory", "disk"])
def test_epoch_e_trains_on_view_e_mod_k(pooling, where, tmp_path):
    x, y = _data()
    epochs = VIEWS + 1  # The last epoch takes view 0 again.
    model = _classifier(pooling)
    cache_dir = tmp_path / "c" if where == "disk" else None
    kgp.fit_cached(
        model, x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
        views=VIEWS, augment=_ShiftEachPass(), cache_dir=cache_dir,
    )  # fmt: skip
    # The reference: one epoch on each view's images in turn; the optimizer
    # goes on from one fit_cached to the next as from one fit to the next.
    reference = _classifier(pooling)
    for epoch in range(epochs):
        kgp.fit_cached(
            reference, x + SHIFTS[epoch % VIEWS], y, batch_size=BATCH,
            epochs=1, shuffle=False, verbose=0,
        )  # fmt: skip
    for expected, actual in zip(
        reference.get_weights(), model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_a_cache_of_views_holds_each_pass():
    x, y = _data()
    model = _classifier()
    cached = kgp.cache_features(
        model, x, y, batch_size=BATCH, views=VIEWS, augment=_ShiftEachPass()
    )
    assert len(cached) == SAMPLES and cached.views == VIEWS
    for view, shift in enumerate(SHIFTS):
        rows = slice(view * SAMPLES, (view + 1) * SAMPLES)
        np.testing.assert_array_equal(
            cached.maps[rows], kgp.cache_features(model, x + shift).maps
        )
        np.testing.assert_array_equal(cached.y[rows], y)


def test_a_random_dataset_gives_new_views_on_each_pass():
    # A generator's state goes on from pass to pass, as from epoch to epoch
    # in model.fit (a seeded tf.random op would repeat its numbers).
    x, y = _data()
    generator = tf.random.Generator.from_seed(1)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .map(lambda image, label: (image + generator.uniform((), 0, 50), label))
        .batch(BATCH)
    )
    cached = kgp.cache_features(_classifier(), dataset, views=2)
    first, second = cached.maps[:SAMPLES], cached.maps[SAMPLES:]
    assert first.shape == second.shape
    assert not np.array_equal(first, second)


def test_a_keras_augmentation_layer_runs_in_training_mode():
    x, y = _data()
    flip = keras.layers.RandomFlip("horizontal", seed=3)
    cached = kgp.cache_features(
        _classifier(), x, y, views=4, augment=flip, batch_size=SAMPLES
    )
    views = cached.maps.reshape(4, SAMPLES, -1)
    # In inference mode RandomFlip flips nothing: every view would be equal.
    assert any(not np.array_equal(views[0], view) for view in views[1:])


def test_views_survive_save_and_load(tmp_path):
    x, y = _data()
    model = _classifier()
    cached = kgp.cache_features(model, x, y, views=2, augment=_ShiftEachPass())
    cached.save(tmp_path / "c")
    loaded = kgp.CachedFeatures.load(tmp_path / "c", model=model, lazy=True)
    assert loaded.views == 2 and len(loaded) == SAMPLES
    np.testing.assert_array_equal(np.asarray(loaded.maps), cached.maps)


def test_a_generator_cannot_give_several_views():
    x, y = _data()
    batches = ((x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, SAMPLES, BATCH))
    with pytest.raises(ValueError, match="a generator can be read only once"):
        kgp.cache_features(_classifier(), batches, views=2)


@pytest.mark.parametrize("views", [0, 1.5, True])
def test_invalid_views_are_refused(views):
    with pytest.raises(ValueError, match=r"Received: views="):
        kgp.cache_features(_classifier(), _data()[0], views=views)


def test_validation_data_of_several_views_is_refused():
    x, y = _data()
    model = _classifier()
    views = kgp.cache_features(model, x, y, views=2, augment=_ShiftEachPass())
    with pytest.raises(ValueError, match="validation_data` must be a cache of one"):
        kgp.fit_cached(model, x, y, validation_data=views, verbose=0)
