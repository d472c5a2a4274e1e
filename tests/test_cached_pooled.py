"""The pooled shortcut: pooled vectors train the head the map cache trains."""

import keras
import numpy as np
import pytest
from cached_cases import compiled, random_features

import keras_globalpool as kgp

SAMPLES, BATCH = 48, 8

POOLABLE = {
    "avg": lambda: "avg",
    "max": lambda: "max",
    "mixed_concat": lambda: kgp.GlobalMixedPooling(mode="concat"),
    "mixed_mean": lambda: kgp.GlobalMixedPooling(mode="mean"),
    "keras_avg": lambda: keras.layers.GlobalAveragePooling2D(),
}
TRAINED = {
    "gem": lambda: "gem",
    "attention": lambda: "attention",
    "mixed_learned": lambda: kgp.GlobalMixedPooling(mode="learned"),
}


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (SAMPLES, 8, 8, 1)).astype("float32")
    y = np.arange(SAMPLES) % 3
    sample_weight = (1.0 + np.arange(SAMPLES) / SAMPLES).astype("float32")
    return x, y, sample_weight


def _classifier(pooling, hidden_units=(6,)):
    backbone = random_features()
    keras.utils.set_random_seed(7)
    model = kgp.build_classifier(
        backbone,
        3,
        input_shape=(8, 8, 1),
        pooling=pooling(),
        dropout=0.25,
        hidden_units=hidden_units,
    )
    return compiled(model)


def _train(pooling, pooled, **kwargs):
    model = _classifier(pooling)
    x, y, sample_weight = _data()
    keras.utils.set_random_seed(99)  # The dropout's draws.
    history = kgp.fit_cached(
        model,
        x,
        y,
        sample_weight=sample_weight,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        verbose=0,
        pooled=pooled,
        validation_data=(x[:16], y[:16]),
        **kwargs,
    )
    return model, history


@pytest.mark.parametrize("name", sorted(POOLABLE))
def test_pooled_cache_trains_the_head_the_map_cache_trains(name):
    maps_model, maps_history = _train(POOLABLE[name], pooled=False)
    pooled_model, pooled_history = _train(POOLABLE[name], pooled=True)
    for expected, actual in zip(
        maps_model.get_weights(), pooled_model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(
            pooled_history.history[key], maps_history.history[key], rtol=1e-5
        )
    # Both from the float16 maps the caches store.
    x = _data()[0]
    np.testing.assert_allclose(
        kgp.predict_cached(pooled_model, x),
        kgp.predict_cached(maps_model, kgp.cache_features(maps_model, x)),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("name", sorted(POOLABLE))
def test_a_pooler_that_trains_nothing_is_cached_pooled(name):
    model = _classifier(POOLABLE[name])
    x = _data()[0]
    cached = kgp.cache_features(model, x, pooled="auto")
    maps = kgp.cache_features(model, x)
    assert cached.pooled and not maps.pooled
    channels = 16 if name == "mixed_concat" else 8
    assert cached.maps.shape == (SAMPLES, channels)
    assert maps.maps.shape == (SAMPLES, 8, 8, 8)
    # The vectors are the pooler's output on the stored (float16) maps.
    expected = model.get_layer("pooler")(maps.maps)
    np.testing.assert_array_equal(cached.maps, keras.ops.convert_to_numpy(expected))


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_a_pooler_that_trains_keeps_the_maps(name):
    model = _classifier(TRAINED[name])
    x = _data()[0]
    assert kgp.cache_features(model, x, pooled="auto").maps.shape == (
        SAMPLES,
        8,
        8,
        8,
    )
    with pytest.raises(ValueError, match=r"`pooled=True`.*weights"):
        kgp.cache_features(model, x, pooled=True)


@pytest.mark.parametrize("pooled", ["yes", 1, None])
def test_invalid_pooled_is_refused(pooled):
    model = _classifier(POOLABLE["avg"])
    with pytest.raises(ValueError, match=r"Received: pooled="):
        kgp.cache_features(model, _data()[0], pooled=pooled)


@pytest.mark.parametrize("other", ["max", "gem"])
def test_a_cache_pooled_otherwise_is_refused(other, tmp_path):
    x, y, _ = _data()
    cached = kgp.cache_features(_classifier(POOLABLE["avg"]), x, y, pooled=True)
    model = _classifier(POOLABLE[other] if other in POOLABLE else TRAINED[other])
    message = "pooled by GlobalAveragePooling, but `model`'s pooler pools otherwise"
    with pytest.raises(ValueError, match=message):
        kgp.fit_cached(model, cached, verbose=0)
    with pytest.raises(ValueError, match=message):
        kgp.predict_cached(model, cached)
    cached.save(tmp_path / "c")
    with pytest.raises(ValueError, match=message):
        kgp.CachedFeatures.load(tmp_path / "c", model=model)


def test_validation_cache_must_match_the_training_cache():
    x, y, _ = _data()
    model = _classifier(POOLABLE["avg"])
    maps = kgp.cache_features(model, x, y)
    with pytest.raises(ValueError, match="cache of feature maps, but the training"):
        kgp.fit_cached(model, x, y, validation_data=maps, verbose=0, pooled=True)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_pooled_cache_saves_and_loads_as_pooled(lazy, tmp_path):
    x, y, _ = _data()
    model = _classifier(POOLABLE["mixed_mean"])
    cached = kgp.cache_features(model, x, y, pooled=True)
    cached.save(tmp_path / "c")
    loaded = kgp.CachedFeatures.load(tmp_path / "c", model=model, lazy=lazy)
    assert loaded.pooler == cached.pooler and loaded.pooled
    np.testing.assert_array_equal(np.asarray(loaded.maps), cached.maps)
    np.testing.assert_array_equal(
        kgp.predict_cached(model, loaded), kgp.predict_cached(model, cached)
    )


def test_pooled_cache_on_disk_trains_the_same_head(tmp_path):
    in_memory, _ = _train(POOLABLE["avg"], pooled=True)
    on_disk, _ = _train(POOLABLE["avg"], pooled=True, cache_dir=tmp_path / "c")
    assert kgp.CachedFeatures.load(tmp_path / "c").pooled
    for expected, actual in zip(
        in_memory.get_weights(), on_disk.get_weights(), strict=True
    ):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
