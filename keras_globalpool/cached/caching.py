"""`cache_features`: run the frozen backbone once, keep its maps and the labels."""

import dataclasses
import tempfile
from pathlib import Path

import keras
import numpy as np

from keras_globalpool.cached import budget as budget_lib
from keras_globalpool.cached import distributed, files, store
from keras_globalpool.cached.features import CachedFeatures
from keras_globalpool.cached.fingerprint import backbone_fingerprint
from keras_globalpool.cached.inputs import BatchSource
from keras_globalpool.cached.pooled import describe_pooler, use_pooled
from keras_globalpool.cached.store import MemoryStore
from keras_globalpool.pooler import POOLER_NAME, split_at_pooler

# The largest finite float16.
FLOAT16_MAX = float(np.finfo("float16").max)
# The smallest normal float16, 2**-14: below it float16 loses precision.
FLOAT16_TINY = float(np.finfo("float16").tiny)


def _float16_keeps_precision(maps, channel_axis):
    # float16 rounds a normal value x to within 2**-11 |x|, and a subnormal
    # one to within 2**-25 = 2**-11 * FLOAT16_TINY. So when the largest
    # magnitude m of each image's channel is 0 or in [FLOAT16_TINY,
    # FLOAT16_MAX], every value of that channel is within 2**-11 m. Asking
    # it of every value would reject almost every ReLU map for the few
    # values just above 0. NaN and inf fail the comparisons: float32.
    channel_axis %= maps.ndim
    others = tuple(axis for axis in range(1, maps.ndim) if axis != channel_axis)
    scale = np.abs(maps).max(axis=others) if others else np.abs(maps)
    in_range = (scale >= FLOAT16_TINY) & (scale <= FLOAT16_MAX)
    return bool(np.all((scale == 0) | in_range))


def frozen_feature_model(model):
    """`(features, head)` of `model`, split at its pooler; the features frozen."""
    features, head = split_at_pooler(model)
    trainable = len(features.trainable_weights)
    if trainable:
        raise ValueError(
            "Cached training trains only the pooler and the layers after it, "
            "so the backbone and the layers before it must be frozen: set "
            "`model.get_layer('backbone').trainable = False`. Received: "
            f"{trainable} trainable weights before the head"
        )
    return features, head


def _unwritable(cache_dir, error):
    where = (
        f"the temporary folder {tempfile.gettempdir()!r} (pass `cache_dir`)"
        if cache_dir is None
        else "`cache_dir`"
    )
    return ValueError(
        f"Cannot write the feature cache to {where}: {error}. Pass a "
        "`cache_dir` in a writable folder. "
        f"Received: cache_dir={None if cache_dir is None else str(cache_dir)!r}"
    )


def _open_writer(cache_dir, overwrite, shard_bytes):
    try:
        if cache_dir is None:
            return store.temporary_writer(shard_bytes)
        Path(cache_dir).parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(cache_dir, error) from error
    try:
        return store.ShardWriter(cache_dir, overwrite, shard_bytes)
    except FileExistsError:
        raise
    except OSError as error:
        raise _unwritable(cache_dir, error) from error


def _check_same_tensors(first, y_batch, sw_batch):
    if first != (y_batch is not None, sw_batch is not None):
        raise ValueError(
            "Every batch of `x` must hold the same tensors: labels or "
            "sample weights came with only some of the batches"
        )


class _Computer:
    """One batch of images to what the cache stores: maps, or pooled vectors.

    The maps are rounded to float16 while that keeps their precision (a
    sticky choice: once a batch needs float32, every later one gets it).
    A pooler, for the pooled shortcut, pools the stored maps, exactly what
    the head's pooler would take from a map cache.
    """

    def __init__(self, features, channel_axis, pooler=None, augment=None):
        self.features, self.channel_axis = features, channel_axis
        self.pooler, self.augment = pooler, augment
        self.float16 = True

    def __call__(self, images):
        if self.augment is not None:
            images = (
                self.augment(images, training=True)
                if isinstance(self.augment, keras.layers.Layer)
                else self.augment(images)
            )
        batch = distributed.predict_batch(self.features, images)
        if self.float16 and not _float16_keeps_precision(batch, self.channel_axis):
            self.float16 = False
        dtype = "float16" if self.float16 else np.promote_types(batch.dtype, "float32")
        batch = batch.astype(dtype, copy=False)
        if self.pooler is None:
            return batch
        return keras.ops.convert_to_numpy(self.pooler(batch))


def _passes(source, views):
    # The input read `views` times, each pass as many rows as the first.
    rows = []
    for view in range(views):
        count = 0
        for x_batch, y_batch, sw_batch in source:
            count += len(x_batch)
            yield x_batch, y_batch, sw_batch
        rows.append(count)
        if rows[view] != rows[0]:
            raise ValueError(
                f"Each of the {views} views must read the same samples, but "
                f"pass {view + 1} of `x` gave {rows[view]} rows and the "
                f"first {rows[0]}. Pass an input that gives the same samples "
                "each time it is read."
            )


def _read(compute, source, views, verbose, meta, disk):
    # RAM while the rows fit in the budget; else, or with a `cache_dir`,
    # `.npy` shards written as the backbone runs.
    memory_budget, cache_dir, overwrite = disk
    budget = budget_lib.parse(memory_budget)
    shard_bytes = files.SHARD_BYTES
    if budget is not None:
        shard_bytes = min(shard_bytes, budget // 4)
    writer = None
    if cache_dir is not None:
        # Before the backbone runs: an unwritable folder fails at once.
        writer = _open_writer(cache_dir, overwrite, shard_bytes)
    samples = None if source.samples is None else source.samples * views
    memory = MemoryStore(samples) if writer is None else None
    progress = keras.utils.Progbar(samples, verbose=verbose)
    batches, first = 0, None
    try:
        for x_batch, y_batch, sw_batch in _passes(source, views):
            batch = compute(x_batch)
            if first is None:
                first = (y_batch is not None, sw_batch is not None)
                if budget is not None:
                    budget_lib.check_one_batch(memory_budget, budget, batch)
                    if writer is not None:
                        writer.shard_bytes = max(writer.shard_bytes, batch.nbytes)
            _check_same_tensors(first, y_batch, sw_batch)
            y_batch = None if y_batch is None else np.asarray(y_batch)
            sw_batch = None if sw_batch is None else np.asarray(sw_batch)
            if writer is None and budget is not None:
                expected = (
                    samples * batch[:1].nbytes
                    if samples is not None
                    else memory.nbytes + batch.nbytes
                )
                if expected > budget:
                    writer = _open_writer(None, False, max(shard_bytes, batch.nbytes))
                    for stored in memory.batches():
                        writer.append(*stored)
                    memory = None
            (memory if writer is None else writer).append(batch, y_batch, sw_batch)
            batches += 1
            progress.add(len(batch))
        if batches == 0:
            raise ValueError("`x` is empty: it gave no batch of images")
        if writer is None:
            return memory.finish()
        arrays, _ = writer.finish(meta)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return arrays["maps"], arrays["y"], arrays["sample_weight"]


def cache_features(
    model,
    x,
    y=None,
    *,
    sample_weight=None,
    batch_size=32,
    steps=None,
    shard=None,
    pooled=False,
    views=1,
    augment=None,
    memory_budget=None,
    cache_dir=None,
    overwrite=False,
    verbose=0,
):
    """Runs `model`'s frozen backbone once over `x` and keeps its feature maps.

    The maps are taken before pooling, in inference mode, batch by batch,
    so that any head on the same backbone can train on them. When the
    pooler trains nothing (no weights, the same in training and inference:
    average, max, mixed `"concat"` and `"mean"`), `pooled="auto"` keeps its
    pooled vectors instead, computed from the maps as they would be
    stored, so `fit_cached` trains the same head on either.

    The cache fixes the images: random augmentation that `model.fit` would
    draw anew each epoch is drawn once here. `views=K` with `augment`
    caches K augmented views of each image, which `fit_cached` takes in
    turn, one view per epoch.

    They are stored as float16 (half the memory) when that keeps every
    value's precision: for each image and channel, the largest magnitude
    is 0 or in float16's normal range `[2**-14, 65504]`, so every value is
    within `2**-11` (float16's rounding) of that largest magnitude, and
    every value of at least `2**-14` within `2**-11` of itself. Otherwise
    (features around 1e-7, or above 65504, or not finite) they keep the
    backbone's dtype, at least float32.

    `x` is anything `model.fit` takes. A dataset, `PyDataset` or generator
    is read one batch at a time, so the images are never all in memory;
    its labels and sample weights, like `y` and `sample_weight` beside an
    array, are kept in the cache for `fit_cached`.

    Args:
        model: a `keras.Model` with a `"pooler"` layer and everything
            before it frozen, such as a `kgp.build_classifier` model.
        x: the raw images `model` takes: an array, or a batched
            `tf.data.Dataset`, a `keras.utils.PyDataset` or a generator
            yielding `images`, `(images, labels)` or
            `(images, labels, sample_weights)` batches.
        y: optional array of targets, only with array `x`. Defaults to
            `None`.
        sample_weight: optional array of sample weights, only with array
            `x`. Defaults to `None`.
        batch_size: int. Images per backbone call for array `x`; other
            inputs keep their own batches. Defaults to `32`.
        steps: optional int. Read at most this many batches of `x`;
            needed for an infinite input. Defaults to `None`: all of `x`.
        shard: optional `(index, count)`: cache only shard `index` of
            `count`, block-interleaved: with batches of `batch_size` (for
            arrays) or `x`'s own, sample `i` is in shard
            `(i // (batch_size / count)) % count`. Defaults to `None`: all
            of `x`, or under a `tf.distribute.MultiWorkerMirroredStrategy`
            this worker's shard, `(worker index, number of workers)`.
        pooled: `False`, `"auto"` or `True`. Cache the pooler's outputs
            instead of the maps: `"auto"` when the pooler trains nothing,
            `True` to insist (`ValueError` for a pooler with weights, such
            as GeM or attention). Defaults to `False`: the maps, which any
            head on the same backbone can train on.
        views: int. Read `x` this many times, each pass through `augment`,
            and keep every pass: `views * len(x)` rows. A generator can be
            read only once. Defaults to `1`.
        augment: optional callable applied to each batch of images before
            the backbone: a Keras layer or model (such as a
            `keras.Sequential` of `keras.layers.Random*` layers) is called
            with `training=True`, anything else with the images alone. A
            `tf.data` pipeline with random maps gives new views on each
            pass without it. Defaults to `None`.
        memory_budget: optional int (bytes) or string such as `"512MB"`
            or `"2GiB"`: the most memory the maps may take. When they
            would take more (judged from the first batch when `x`'s length
            is known, else as they come), they are written to `.npy`
            shards in a temporary folder as the backbone runs, and the
            cache reads them from there. Defaults to `None`: a quarter of
            the available memory.
        cache_dir: optional str or `pathlib.Path`, a folder to write the
            cache to (always on disk then), for `CachedFeatures.load`.
            Defaults to `None`: in memory, or a temporary folder.
        overwrite: bool. Replace a cache already at `cache_dir`. Defaults
            to `False`: raise `FileExistsError`.
        verbose: int. `1` shows a progress bar. Defaults to `0`.

    Returns:
        `CachedFeatures`, with `pooled` and `views` set. On disk, its arrays
        are read-only `ShardedArray`s that read only the rows asked for.

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(8, 8, 3))
    >>> images = np.random.rand(4, 8, 8, 3) * 255
    >>> cached = kgp.cache_features(model, images)
    >>> cached.maps.shape, cached.maps.dtype
    ((4, 6, 6, 4), dtype('float16'))
    >>> kgp.cache_features(model, images, pooled="auto").maps.shape  # Averaged.
    (4, 4)
    >>> flip = keras.layers.RandomFlip("horizontal", seed=1)
    >>> cached = kgp.cache_features(
    ...     model, images, pooled="auto", views=3, augment=flip)
    >>> len(cached), cached.views, cached.maps.shape
    (4, 3, (12, 4))
    """
    shard = distributed.check_shard(shard, model)
    source = BatchSource(
        x, y, sample_weight, batch_size=batch_size, steps=steps, shard=shard
    )
    return _cache(
        model,
        source,
        verbose,
        (memory_budget, cache_dir, overwrite),
        (pooled, views, augment),
    )


def _check_views(views, augment, source):
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ValueError(f"`views` must be a positive int. Received: views={views!r}")
    if augment is not None and not callable(augment):
        raise ValueError(
            "`augment` must be a callable that takes a batch of images, such "
            f"as a Keras layer. Received: augment={augment!r}"
        )
    if views > 1 and source.kind == "generator":
        raise ValueError(
            f"`views={views}` reads `x` {views} times, but a generator can be "
            "read only once. Pass arrays, a `tf.data.Dataset` or a "
            "`keras.utils.PyDataset`. Received: x as a generator"
        )


def _cache(model, source, verbose=0, disk=(None, None, False), how=(False, 1, None)):
    pooled, views, augment = how
    _check_views(views, augment, source)
    with distributed.scope(model, multi_worker=False):
        features, _ = frozen_feature_model(model)
    pooler = model.get_layer(POOLER_NAME)
    data_format = getattr(pooler, "data_format", None)
    data_format = data_format or keras.config.image_data_format()
    channel_axis = 1 if data_format == "channels_first" else -1
    pooled = use_pooled(pooled, model)
    meta = {
        "fingerprint": backbone_fingerprint(model),
        "views": views,
        "pooler": describe_pooler(pooler) if pooled else None,
    }
    compute = _Computer(features, channel_axis, pooler if pooled else None, augment)
    maps, y, sample_weight = _read(compute, source, views, verbose, meta, disk)
    return CachedFeatures(maps, y, sample_weight, **meta)


def _every_view(values, views):
    # One row per sample, for each of the cache's views.
    values = np.asarray(values)
    return np.concatenate([values] * views) if views > 1 else values


def as_features(
    model,
    x,
    y=None,
    sample_weight=None,
    batch_size=32,
    needs_labels=None,
    argument="x",
    disk=(None, None, False),
    how=(False, 1, None),
):
    """`x` as `CachedFeatures` with its labels: cached now unless it already is.

    `x` is `CachedFeatures` (of `model`'s backbone, checked), a `BatchSource`
    or what `BatchSource` takes; `argument` names it in messages.
    `y` and `sample_weight`, when given, replace a cache's own; `how` is
    `(pooled, views, augment)`, as `cache_features` takes them.
    """
    if isinstance(x, CachedFeatures):
        x.check_model(model, f"passed as {argument}")
        cached = dataclasses.replace(
            x,
            y=x.y if y is None else _every_view(y, x.views),
            sample_weight=(
                x.sample_weight
                if sample_weight is None
                else _every_view(sample_weight, x.views)
            ),
        )
    else:
        source = (
            x
            if isinstance(x, BatchSource)
            else BatchSource(
                x, y, sample_weight, batch_size=batch_size, needs_labels=needs_labels
            )
        )
        cached = _cache(model, source, disk=disk, how=how)
    if needs_labels and cached.y is None:
        raise ValueError(
            f"`{needs_labels}` needs labels: pass `y`, or cache `x` with "
            "its labels (`cache_features(model, images, labels)`). "
            "Received: CachedFeatures without labels and y=None"
        )
    return cached
