"""`CachedFeatures.save` and `load`: a cache on disk, written atomically, checked."""

import json
import os

import keras
import numpy as np
import pytest
from cached_cases import random_features

import keras_globalpool as kgp
from keras_globalpool.cached import files
from keras_globalpool.cached.fingerprint import backbone_fingerprint

SAMPLES = 20


def _classifier(seed=123, scale=1.0 / 255.0):
    backbone = random_features(filters=4, scale=scale, seed=seed)
    keras.utils.set_random_seed(0)
    return kgp.build_classifier(backbone, 3, input_shape=(8, 8, 1), dropout=0.0)


def _cached(model):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (SAMPLES, 8, 8, 1)).astype("float32")
    y = np.arange(SAMPLES) % 3
    sample_weight = rng.uniform(0.5, 2.0, SAMPLES).astype("float32")
    return kgp.cache_features(model, x, y, sample_weight=sample_weight)


def _assert_equal(actual, expected):
    np.testing.assert_array_equal(actual.maps, expected.maps)
    assert actual.maps.dtype == expected.maps.dtype
    np.testing.assert_array_equal(actual.y, expected.y)
    np.testing.assert_array_equal(actual.sample_weight, expected.sample_weight)
    assert actual.fingerprint == expected.fingerprint


@pytest.mark.parametrize("shard_rows", [None, 3])
def test_save_load_roundtrip(tmp_path, shard_rows):
    model = _classifier()
    cached = _cached(model)
    cached.save(tmp_path / "cache", shard_rows=shard_rows)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["samples"] == SAMPLES
    assert len(manifest["shards"]) == (1 if shard_rows is None else 7)
    _assert_equal(kgp.CachedFeatures.load(tmp_path / "cache", model=model), cached)
    _assert_equal(kgp.CachedFeatures.load(tmp_path / "cache"), cached)


def test_cache_without_labels_roundtrips(tmp_path):
    model = _classifier()
    cached = kgp.CachedFeatures(_cached(model).maps)
    cached.save(tmp_path / "cache")
    loaded = kgp.CachedFeatures.load(tmp_path / "cache")
    np.testing.assert_array_equal(loaded.maps, cached.maps)
    assert loaded.y is None and loaded.sample_weight is None
    assert loaded.fingerprint is None


def test_fingerprint_is_the_same_for_the_same_weights():
    assert backbone_fingerprint(_classifier()) == backbone_fingerprint(_classifier())


def test_load_with_other_backbone_fails(tmp_path):
    _cached(_classifier()).save(tmp_path / "cache")
    other = _classifier(seed=7)  # Same architecture, other weights.
    with pytest.raises(ValueError, match="was made by backbone .*weights sha256"):
        kgp.CachedFeatures.load(tmp_path / "cache", model=other)


def test_load_with_other_layers_of_the_same_weights_fails(tmp_path):
    _cached(_classifier()).save(tmp_path / "cache")
    other = _classifier(scale=1.0 / 127.5)  # The same weights, other inputs.
    assert (
        backbone_fingerprint(other)["weights_sha256"]
        == (backbone_fingerprint(_classifier())["weights_sha256"])
    )
    with pytest.raises(ValueError, match="same weights .* other layers"):
        kgp.CachedFeatures.load(tmp_path / "cache", model=other)


def test_no_overwrite_without_flag(tmp_path):
    model = _classifier()
    cached = _cached(model)
    cached.save(tmp_path / "cache")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        cached.save(tmp_path / "cache")
    smaller = kgp.CachedFeatures(cached.maps[:5], cached.y[:5])
    smaller.save(tmp_path / "cache", overwrite=True)
    assert len(kgp.CachedFeatures.load(tmp_path / "cache")) == 5
    assert os.listdir(tmp_path) == ["cache"]  # No old or partial folder left.


def test_interrupted_write_is_never_read(tmp_path, monkeypatch):
    cached = _cached(_classifier())
    saves = []
    real_save = np.save

    def interrupted_save(*args, **kwargs):
        saves.append(args[0])
        if len(saves) == 3:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(files.np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        cached.save(tmp_path / "cache", shard_rows=3)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["no_manifest", "incomplete", "short_shard"])
def test_incomplete_or_damaged_cache_is_refused(tmp_path, damage):
    _cached(_classifier()).save(tmp_path / "cache", shard_rows=3)
    manifest_path = tmp_path / "cache" / "manifest.json"
    if damage == "no_manifest":
        manifest_path.unlink()
    elif damage == "incomplete":
        manifest = json.loads(manifest_path.read_text())
        manifest["complete"] = False
        manifest_path.write_text(json.dumps(manifest))
    else:
        shard = tmp_path / "cache" / "v0" / "maps-00001.npy"
        shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="incomplete or damaged"):
        kgp.CachedFeatures.load(tmp_path / "cache")


@pytest.mark.parametrize("use", ["fit", "validation", "predict"])
def test_a_cache_of_another_backbone_is_refused(use):
    cached = _cached(_classifier())
    other = _classifier(seed=7)
    other.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="was made by backbone .*weights sha256"):
        if use == "fit":
            kgp.fit_cached(other, cached, verbose=0)
        elif use == "validation":
            kgp.fit_cached(other, _cached(other), verbose=0, validation_data=cached)
        else:
            kgp.predict_cached(other, cached)
