"""Caching to disk as the backbone runs, and training from the shards."""

import gc
import os

import keras
import numpy as np
import pytest
from cached_cases import compiled, random_features

import keras_globalpool as kgp
from keras_globalpool.cached import sequence
from keras_globalpool.cached.store import ShardedArray

SAMPLES, BATCH = 40, 8
# The maps are 8x8x8 float16, 1 KB a sample, 8 KB a batch, 40 KB in all.
SMALL_BUDGET = "20KB"


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (SAMPLES, 8, 8, 1)).astype("float32")
    y = np.arange(SAMPLES) % 3
    # Distinct weights: each names its sample.
    sample_weight = (1.0 + np.arange(SAMPLES) / SAMPLES).astype("float32")
    return x, y, sample_weight


def _classifier(seed=0):
    backbone = random_features()
    keras.utils.set_random_seed(seed)
    model = kgp.build_classifier(
        backbone, 3, input_shape=(8, 8, 1), pooling="attention", dropout=0.0
    )
    return compiled(model)


def _generator():
    x, y, sw = _data()
    return (
        (x[i : i + BATCH], y[i : i + BATCH], sw[i : i + BATCH])
        for i in range(0, SAMPLES, BATCH)
    )


def _disk_cache(model, how, tmp_path):
    x, y, sw = _data()
    if how == "budget":
        return kgp.cache_features(
            model, x, y, sample_weight=sw, batch_size=BATCH, memory_budget=SMALL_BUDGET
        )
    if how == "cache_dir":
        return kgp.cache_features(
            model, x, y, sample_weight=sw, batch_size=BATCH,
            memory_budget=SMALL_BUDGET, cache_dir=tmp_path / "c",
        )  # fmt: skip
    # Unknown length: starts in memory, spills to disk past the budget.
    return kgp.cache_features(model, _generator(), memory_budget=SMALL_BUDGET)


def _assert_same_cache(actual, expected):
    np.testing.assert_array_equal(np.asarray(actual.maps), expected.maps)
    assert actual.maps.dtype == expected.maps.dtype
    assert actual.maps.shape == expected.maps.shape
    np.testing.assert_array_equal(np.asarray(actual.y), expected.y)
    np.testing.assert_array_equal(
        np.asarray(actual.sample_weight), expected.sample_weight
    )
    assert actual.fingerprint == expected.fingerprint


@pytest.mark.parametrize("how", ["budget", "cache_dir", "generator_spills"])
def test_disk_cache_equals_memory_cache(tmp_path, how):
    model = _classifier()
    x, y, sw = _data()
    expected = kgp.cache_features(model, x, y, sample_weight=sw, batch_size=BATCH)
    assert isinstance(expected.maps, np.ndarray)
    cached = _disk_cache(model, how, tmp_path)
    assert isinstance(cached.maps, ShardedArray)
    assert len(cached.maps.shards) > 1  # Written as the batches came.
    _assert_same_cache(cached, expected)
    rows = np.array([39, 0, 17, 8, 8])
    np.testing.assert_array_equal(cached.maps[rows], expected.maps[rows])
    np.testing.assert_array_equal(cached.maps[3:11], expected.maps[3:11])
    np.testing.assert_array_equal(cached.maps[-1], expected.maps[-1])


def test_a_temporary_cache_is_removed_once_unused():
    cached = _disk_cache(_classifier(), "budget", None)
    folder = os.path.dirname(cached.maps.shards[0].filename)
    assert os.path.isdir(folder)
    del cached
    gc.collect()
    assert not os.path.exists(folder)


def test_fit_cached_on_disk_trains_the_same_head(tmp_path):
    x, y, sw = _data()
    expected, model, loaded = _classifier(), _classifier(), _classifier()
    common = dict(batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    kgp.fit_cached(expected, x, y, sample_weight=sw, **common)
    kgp.fit_cached(model, x, y, sample_weight=sw, memory_budget=SMALL_BUDGET, **common)
    kgp.cache_features(loaded, x, y, sample_weight=sw, cache_dir=tmp_path / "c")
    reopened = kgp.CachedFeatures.load(tmp_path / "c", model=loaded, lazy=True)
    assert isinstance(reopened.maps, ShardedArray)
    kgp.fit_cached(loaded, reopened, **common)
    for trained in (model, loaded):
        assert int(trained.optimizer.iterations) == 2 * SAMPLES // BATCH
        for e, a in zip(expected.get_weights(), trained.get_weights(), strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        kgp.predict_cached(loaded, reopened),
        kgp.predict_cached(expected, kgp.cache_features(expected, x)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_shuffled_epochs_hold_each_sample_once(monkeypatch):
    x, y, sw = _data()
    seen = {}
    getitem = sequence.CachedSequence.__getitem__

    def recording(self, index):
        batch = getitem(self, index)
        seen[index] = batch[2]
        return batch

    monkeypatch.setattr(sequence.CachedSequence, "__getitem__", recording)
    model = _classifier()
    epochs, steps = 3, SAMPLES // BATCH
    kgp.fit_cached(
        model, x, y, sample_weight=sw, batch_size=BATCH, epochs=epochs,
        memory_budget=SMALL_BUDGET, seed=1, verbose=0,
    )  # fmt: skip
    assert int(model.optimizer.iterations) == epochs * steps
    orders = []
    for epoch in range(epochs):
        order = np.concatenate([seen[epoch * steps + i] for i in range(steps)])
        np.testing.assert_array_equal(np.sort(order), sw)  # Each sample once.
        orders.append(order)
    assert not np.array_equal(orders[0], sw)  # Shuffled,
    assert not np.array_equal(orders[0], orders[1])  # anew each epoch.


def test_epoch_order_is_a_pure_function_of_the_epoch():
    maps = np.arange(100, dtype="float32").reshape(100, 1)
    one = sequence.CachedSequence(
        maps, maps, batch_size=7, shuffle=True, seed=3, epochs=4
    )
    other = sequence.CachedSequence(
        maps, maps, batch_size=7, shuffle=True, seed=3, epochs=4
    )
    for index in reversed(range(len(one))):  # Any order of calls.
        np.testing.assert_array_equal(one[index][0], other[index][0])
    assert not np.array_equal(one[0][0], one[one.steps][0])  # Epochs differ.
    for epoch in range(4):
        order, ends = sequence.epoch_order(
            100, epoch, 3, block_rows=10, window_blocks=3
        )
        np.testing.assert_array_equal(ends, [30, 60, 90, 100])
        np.testing.assert_array_equal(np.sort(order), np.arange(100))
        # Each window of 3 blocks holds only rows of those 3 blocks.
        for start in range(0, 90, 30):
            assert len(np.unique(order[start : start + 30] // 10)) == 3


@pytest.mark.parametrize("shuffle", [True, False])
def test_disk_batches_equal_memory_batches(shuffle, tmp_path):
    # Windows of 3 blocks of 8 rows; batches of 5 rows span two windows.
    rng = np.random.default_rng(0)
    maps = rng.random((2 * 50, 4)).astype("float32")
    y, sw = np.arange(100) % 3, rng.random(100).astype("float32")
    kgp.CachedFeatures(maps, y, sw, views=2).save(tmp_path / "c", shard_rows=7)
    lazy = kgp.CachedFeatures.load(tmp_path / "c", lazy=True)
    assert isinstance(lazy.maps, ShardedArray)
    options = dict(batch_size=5, shuffle=shuffle, seed=4, epochs=3, views=2)
    window = 3 * 8 * maps[:1].nbytes  # As the readers below set it.
    on_disk = sequence.CachedSequence(
        lazy.maps, lazy.y, lazy.sample_weight, window_bytes=window, **options
    )
    in_memory = sequence.CachedSequence(maps, y, sw, window_bytes=window, **options)
    for reader in (on_disk, in_memory):
        reader.block_rows, reader.window_blocks = 8, 3
    for index in range(len(on_disk)):
        for actual, expected in zip(on_disk[index], in_memory[index], strict=True):
            np.testing.assert_array_equal(actual, expected)
    epoch = np.concatenate([in_memory[i][0] for i in range(in_memory.steps)])
    assert np.array_equal(epoch, maps[:50]) != shuffle  # View 0, in order or not.


def test_budget_below_one_batch_is_refused():
    x, y, _ = _data()
    with pytest.raises(ValueError, match=r"`memory_budget`=1000 .*below one batch"):
        kgp.cache_features(_classifier(), x, y, batch_size=BATCH, memory_budget=1000)


@pytest.mark.parametrize("budget", ["lots", -5, "0MB"])
def test_invalid_budget_is_refused(budget):
    x, y, _ = _data()
    with pytest.raises(ValueError, match="Received: memory_budget="):
        kgp.cache_features(_classifier(), x, y, memory_budget=budget)


def test_unwritable_cache_dir_is_refused(tmp_path):
    x, y, _ = _data()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="Received: cache_dir=.*a_file"):
        kgp.cache_features(_classifier(), x, y, cache_dir=blocker / "cache")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(0o500)
        with pytest.raises(ValueError, match="Received: cache_dir=.*locked"):
            kgp.cache_features(_classifier(), x, y, cache_dir=locked / "cache")


def test_existing_cache_is_not_overwritten_without_flag(tmp_path):
    x, y, sw = _data()
    model = _classifier()
    kgp.cache_features(model, x[:8], y[:8], cache_dir=tmp_path / "c")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kgp.cache_features(model, x, y, cache_dir=tmp_path / "c")
    assert len(kgp.CachedFeatures.load(tmp_path / "c")) == 8
    cached = kgp.cache_features(
        model, x, y, sample_weight=sw, cache_dir=tmp_path / "c", overwrite=True
    )
    _assert_same_cache(kgp.CachedFeatures.load(tmp_path / "c", model=model), cached)
    assert sorted(os.listdir(tmp_path)) == ["c"]  # No partial or old folder.


def test_interrupted_caching_leaves_nothing(tmp_path):
    def failing():
        yield from list(_generator())[:3]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kgp.cache_features(_classifier(), failing(), cache_dir=tmp_path / "c")
    assert os.listdir(tmp_path) == []


def test_float16_promotion_is_sticky_across_shards():
    # Batches 0-2 keep float16's precision; batch 3 holds a value above
    # float16's largest: float32 from there, earlier rows stay rounded.
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Identity()])
    model = kgp.build_classifier(
        backbone, 2, input_shape=(2, 2, 1), pooling="avg", dropout=0.0
    )
    rng = np.random.default_rng(1)
    x = rng.uniform(1, 100, (5 * BATCH, 2, 2, 1)).astype("float32")
    x[3 * BATCH + 2, 0, 0, 0] = 1e5
    in_memory = kgp.cache_features(model, x, batch_size=BATCH)
    # Shards of one batch (64 B of float16 maps): a quarter of the budget.
    on_disk = kgp.cache_features(model, x, batch_size=BATCH, memory_budget=4 * 64)
    assert [shard.dtype for shard in on_disk.maps.shards] == 3 * [np.float16] + 2 * [
        np.float32
    ]
    assert in_memory.maps.dtype == on_disk.maps.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(on_disk.maps), in_memory.maps)
    early = slice(0, 3 * BATCH)
    np.testing.assert_array_equal(
        in_memory.maps[early], x[early].astype("float16").astype("float32")
    )
    np.testing.assert_array_equal(in_memory.maps[3 * BATCH :], x[3 * BATCH :])
