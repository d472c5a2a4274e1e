"""`fit_cached` and `predict_cached`: train and run a head on cached feature maps."""

import math

import keras

from keras_globalpool.cached import budget as budget_lib
from keras_globalpool.cached import distributed
from keras_globalpool.cached.caching import (
    as_features,
    cache_features,
    frozen_feature_model,
)
from keras_globalpool.cached.features import CachedFeatures
from keras_globalpool.cached.inputs import BatchSource
from keras_globalpool.cached.pooled import acts_only_in_training, after_pooler
from keras_globalpool.cached.sequence import CachedSequence
from keras_globalpool.cached.store import ShardedArray


def _check_inference_equals_training(features):
    # _flatten_layers reaches nested models and layers held by other layers.
    found = [
        f"{layer.name!r} ({type(layer).__name__})"
        for layer in features._flatten_layers(include_self=False)
        if acts_only_in_training(layer)
    ]
    if found:
        raise ValueError(
            "`model` has layers before its 'pooler' that act only in training: "
            f"{', '.join(found)}. `model.fit` runs them in training mode, but "
            "`fit_cached` computes the feature maps once, in inference mode, so "
            "it would train the head on other inputs. Move augmentation into "
            "the data pipeline (apply the layers to the images, e.g. in a "
            "`tf.data` map), or train with `model.fit`; or pass "
            "`allow_inference_mode=True` to train on the inference-mode maps "
            "(what `model.predict` computes). Received: a model with "
            f"{len(found)} such layers before the pooler"
        )


def _check_standard_training(model):
    for method in ("train_step", "compute_loss"):
        if getattr(type(model), method) is not getattr(keras.Model, method):
            raise ValueError(
                f"`model`'s class {type(model).__name__} overrides `{method}`, "
                "which `fit_cached` cannot run: it trains a head model made "
                "of `model`'s layers with the standard training step. Train "
                f"with `model.fit`. Received: model={model.name!r}"
            )


def _compile_like(head, model):
    # The objects `model.compile` received, not `get_compile_config()`, whose
    # round trip through serialization loses unregistered functions and
    # classes and refuses lambdas. The optimizer is `model.optimizer`
    # itself, already loss-scaled if the policy asked for it.
    arguments = model._compile_config.config
    head.compile(
        optimizer=model.optimizer,
        loss=arguments["loss"],
        loss_weights=arguments["loss_weights"],
        metrics=arguments["metrics"],
        weighted_metrics=arguments["weighted_metrics"],
        run_eagerly=model.run_eagerly,
        steps_per_execution=model.steps_per_execution,
        jit_compile=model.jit_compile,
        auto_scale_loss=False,
    )


def _validation_features(model, validation_data, batch_size, pooled, shard=None):
    if isinstance(validation_data, tuple | list):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
            tuple(validation_data)
        )
    else:
        x, y, sample_weight = validation_data, None, None
    if shard is not None and not isinstance(x, CachedFeatures):
        x = BatchSource(
            x, y, sample_weight, batch_size, needs_labels="validation_data",
            shard=shard, shard_batch=batch_size,
        )  # fmt: skip
        y = sample_weight = None
    cached = as_features(
        model,
        x,
        y,
        sample_weight,
        batch_size,
        needs_labels="validation_data",
        argument="validation_data",
        how=(pooled, 1, None),
    )
    if cached.pooled != pooled:
        kinds = {True: "pooled vectors", False: "feature maps"}
        raise ValueError(
            f"`validation_data` is a cache of {kinds[cached.pooled]}, but the "
            f"training samples are cached as {kinds[pooled]}: cache both with "
            f"the same `pooled`. Received: validation_data with "
            f"pooled={cached.pooled}"
        )
    if cached.views > 1:
        raise ValueError(
            "`validation_data` must be a cache of one view: the model is "
            "validated on the images as they are. Received: validation_data "
            f"with views={cached.views}"
        )
    if isinstance(cached.maps, ShardedArray):
        return CachedSequence(cached.maps, cached.y, cached.sample_weight, batch_size)
    if cached.sample_weight is None:
        return cached.maps, cached.y
    return cached.maps, cached.y, cached.sample_weight


def _fit_multi_worker(strategy, head, sequence, validation_data, batch_size, callbacks):
    # Under MultiWorkerMirroredStrategy each worker feeds its own shard as
    # a DistributedDataset; every worker must run as many steps.
    distributed.check_equal_steps(strategy, sequence.steps)
    validation_steps = None
    if validation_data is not None:
        if not isinstance(validation_data, CachedSequence):
            maps, y, sample_weight = (*validation_data, None)[:3]
            validation_data = CachedSequence(maps, y, sample_weight, batch_size)
        # One pass per epoch, read on from where the last evaluation ended.
        validation_data.epochs = sequence.epochs
        validation_steps = validation_data.steps
        distributed.check_equal_steps(
            strategy, validation_steps, argument="validation_data"
        )
        validation_data = distributed.distribute_sequence(strategy, validation_data)
    head.fit(
        distributed.distribute_sequence(strategy, sequence),
        epochs=sequence.epochs,
        steps_per_epoch=sequence.steps,
        verbose=callbacks.params["verbose"],
        callbacks=callbacks,
        validation_data=validation_data,
        validation_steps=validation_steps,
        shuffle=False,
    )


class _FullModelCallbacks(keras.callbacks.CallbackList):
    """The user's callbacks, as `model.fit` runs them, while the head trains.

    `head.fit` calls the hooks, but each callback's `model` is the full
    model, so checkpoints save a model that takes images and callbacks read
    and set `model.optimizer`, the optimizer that trains. A stop requested
    on the full model (EarlyStopping, TerminateOnNaN) is passed to the
    head, whose flag `fit` checks, and so is the first epoch that
    BackupAndRestore sets when it resumes.
    """

    def __init__(self, callbacks, model, head, sequence=None, **params):
        super().__init__(
            callbacks,
            add_history=True,
            add_progbar=params["verbose"] != 0,
            model=model,
            **params,
        )
        self._full_model, self._head = model, head
        self._sequence = sequence
        head.history = model.history  # What `head.fit` returns.

    def on_train_begin(self, logs=None):
        self._full_model.stop_training = False  # As `model.fit` starts.
        super().on_train_begin(logs)
        self._head._initial_epoch = self._full_model._initial_epoch
        if self._sequence is not None:
            # Before the first batch is read: batch i is then of epoch
            # initial_epoch + i // steps, also when BackupAndRestore resumes.
            self._sequence.first_epoch = self._full_model._initial_epoch or 0

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, distributed.squeeze_logs(logs))
        self._pass_stop_to_head()

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, distributed.squeeze_logs(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._pass_stop_to_head()

    def _pass_stop_to_head(self):
        if self._full_model.stop_training:
            self._head.stop_training = True


def fit_cached(
    model,
    x,
    y=None,
    *,
    sample_weight=None,
    batch_size=None,
    epochs=1,
    verbose="auto",
    callbacks=None,
    validation_data=None,
    shuffle=True,
    allow_inference_mode=False,
    pooled="auto",
    views=1,
    augment=None,
    memory_budget=None,
    cache_dir=None,
    overwrite=False,
    seed=None,
    shard=None,
):
    """Trains the head of a model with a frozen backbone on cached feature maps.

    Equivalent to `model.fit` for a model whose layers before the pooler
    are frozen, but the backbone runs once instead of once per epoch. The
    head (the `"pooler"` and every layer after it: dropout, hidden layers,
    predictions) trains with the objects `model` was compiled with: its
    loss and metrics (custom functions, classes and lambdas included) and
    `model.optimizer` itself, whose state (step count, moments, schedule)
    continues from an earlier `model.fit` or `fit_cached` as in a second
    `model.fit`; compile `model` again to start afresh. The trained weights
    are `model`'s own.

    Callbacks see `model` as in `model.fit`: `ModelCheckpoint` saves the
    full model, which loads and predicts from images; `EarlyStopping` stops
    the training and restores `model`'s weights; `ReduceLROnPlateau` and
    `LearningRateScheduler` set the rate of `model.optimizer`, the one
    that trains; `kgp.PooledFeatureMonitor` runs `model` on its images.

    The maps are computed in inference mode, so a model with layers before
    the pooler that act differently in training, which `model.fit` would
    run in training mode, is refused: augmentation (`RandomFlip`, any
    `keras.layers.Random*`), `Dropout` and its kin, `GaussianNoise`, a
    trainable `BatchNormalization`, or any layer holding a
    `keras.random.SeedGenerator`.

    Args:
        model: a compiled `keras.Model` with a `"pooler"` layer and
            everything before it frozen, such as a `kgp.build_classifier`
            model.
        x: raw images, as for `model.fit`: an array, or a batched
            `tf.data.Dataset`, a `keras.utils.PyDataset` or a generator
            yielding `(images, labels)` or
            `(images, labels, sample_weights)` batches, read one batch at
            a time; or `CachedFeatures` from `cache_features` (to reuse one
            cache for several heads).
        y: the targets, with array `x` or to replace those of
            `CachedFeatures`. Defaults to `None`: those `x` holds.
        sample_weight: optional sample weights, as `y`. Defaults to
            `None`.
        batch_size: int. Samples per training step. Defaults to `None`:
            the batches of a dataset, `PyDataset` or generator `x`, else
            `32`.
        epochs: int. Defaults to `1`.
        verbose: as for `model.fit`. Defaults to `"auto"`.
        callbacks: optional list of `keras.callbacks.Callback`.
        validation_data: optional `(x_val, y_val)` or
            `(x_val, y_val, sample_weight_val)` with array or
            `CachedFeatures` `x_val`, or `CachedFeatures` with labels, or a
            dataset, `PyDataset` or generator as `x`.
        shuffle: bool. Shuffle the training samples each epoch. Defaults to
            `True`.
        allow_inference_mode: bool. Train even when layers before the
            pooler act only in training (such as EfficientNet's stochastic
            depth dropout), on the maps `model.predict` computes, unlike
            `model.fit`. Defaults to `False`: such a model is refused.
        pooled: `"auto"`, `True` or `False`, as for `cache_features`: cache
            the pooled vectors of a pooler that trains nothing, which train
            the same head as its maps. Defaults to `"auto"`: pooled when the
            pooler allows it.
        views: int. As for `cache_features`: cache this many passes over
            images `x` through `augment`; epoch `e` trains on view
            `e % views`. Defaults to `1`.
        augment: optional callable applied to the images of each pass
            before the backbone, as for `cache_features`. Defaults to
            `None`.
        memory_budget: as for `cache_features`: maps above it are cached
            on disk. Defaults to `None`: a quarter of the available memory.
        cache_dir: optional folder to cache the maps of images `x` in, as
            `cache_features` does. Defaults to `None`.
        overwrite: bool. Replace a cache already at `cache_dir`. Defaults
            to `False`.
        seed: optional int. The shuffling order of a cache on disk, which
            is read in blocks: blocks are shuffled, then the rows within
            windows of blocks (a quarter of `memory_budget`). Defaults to
            `None`: drawn from NumPy's global generator. A cache in memory
            is shuffled by `model.fit`'s own rule.
        shard: optional `(index, count)`, as for `cache_features`: train on
            this shard of images `x` only. Defaults to `None`: all of `x`,
            or under a `tf.distribute.MultiWorkerMirroredStrategy` this
            worker's shard, `(worker index, number of workers)`; each
            worker then trains on its part, `batch_size / count` samples,
            of every batch (`x` as `CachedFeatures` is taken as this
            worker's shard).

    Distributed training: build and compile `model` in a
    `tf.distribute.MirroredStrategy` or `MultiWorkerMirroredStrategy`
    scope, or set a `keras.distribution.DataParallel` on jax; the backbone
    pass and the head's training then run on every replica or device.

    Returns:
        The `keras.callbacks.History` of the training, also `model.history`.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 3, input_shape=(96, 96, 3), weights=None)
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> x, y = np.zeros((8, 96, 96, 3)), np.arange(8) % 3
    >>> history = kgp.fit_cached(model, x, y, epochs=2, verbose=0)
    >>> model.predict(x, verbose=0).shape  # The full model, trained head.
    (8, 3)
    >>> int(model.optimizer.iterations)  # 2 epochs of 1 batch.
    2
    """
    if not model.compiled:
        raise ValueError(
            "`model` must be compiled before `fit_cached`, which trains the "
            "head with the model's optimizer, loss and metrics. "
            "Call `model.compile(...)` first."
        )
    _check_standard_training(model)
    strategy = distributed.strategy_of(model)
    multi_worker = distributed.is_multi_worker(strategy)
    shard = distributed.check_shard(shard, model)
    distributed.check_batch_size(batch_size)
    # A head built outside the strategy's scope trains on one replica.
    with distributed.scope(model):
        features, head = frozen_feature_model(model)
    if not allow_inference_mode:
        _check_inference_equals_training(features)
    if not isinstance(x, CachedFeatures):
        x = BatchSource(
            x, y, sample_weight, batch_size or 32, needs_labels="fit_cached",
            shard=shard, shard_batch=batch_size,
        )  # fmt: skip
        y = sample_weight = None
    train = as_features(
        model,
        x,
        y,
        sample_weight,
        needs_labels="fit_cached",
        disk=(memory_budget, cache_dir, overwrite),
        how=(pooled, views, augment),
    )
    with distributed.scope(model):
        if train.pooled:
            head = after_pooler(model)
        if multi_worker:
            head = distributed.multi_worker_head(head)
        _compile_like(head, model)
    if batch_size is None:
        # As `model.fit`: a dataset, PyDataset or generator brings its batches.
        batch_size = 32 if isinstance(x, CachedFeatures) else x.first_batch_rows
    distributed.check_batch_size(batch_size, samples=len(train))
    # Each worker trains its shard's part of every batch.
    local_batch = batch_size // shard[1] if multi_worker else batch_size
    if validation_data is not None:
        validation_data = _validation_features(
            model, validation_data, batch_size, train.pooled, shard
        )
    sequence = None
    if isinstance(train.maps, ShardedArray) or train.views > 1 or multi_worker:
        budget = budget_lib.parse(memory_budget)
        sequence = CachedSequence(
            train.maps,
            train.y,
            train.sample_weight,
            local_batch,
            shuffle=shuffle,
            seed=seed,
            epochs=epochs,
            # Two windows at most in memory (a batch may span two): half the budget.
            window_bytes=None if budget is None else budget // 4,
            views=train.views,
        )
    callbacks = _FullModelCallbacks(
        callbacks,
        model,
        head,
        sequence,
        verbose=verbose,
        epochs=epochs,
        steps=sequence.steps if sequence else math.ceil(len(train) / batch_size),
    )
    if keras.backend.backend() == "jax":
        # A callback's `model` syncs that model's JAX training state into
        # the variables before it reads them; the state is the head's.
        model.jax_state_sync = head.jax_state_sync
    try:
        if multi_worker:
            _fit_multi_worker(
                strategy, head, sequence, validation_data, local_batch, callbacks
            )
            return model.history
        if sequence is not None:
            # The sequence shuffles; fit must not reorder its batches.
            head.fit(
                sequence,
                epochs=epochs,
                steps_per_epoch=sequence.steps,
                verbose=verbose,
                callbacks=callbacks,
                validation_data=validation_data,
                shuffle=False,
            )
            return model.history
        head.fit(
            train.maps,
            train.y,
            sample_weight=train.sample_weight,
            batch_size=batch_size,
            epochs=epochs,
            verbose=verbose,
            callbacks=callbacks,
            validation_data=validation_data,
            shuffle=shuffle,
        )
    finally:
        if keras.backend.backend() == "jax":
            del model.jax_state_sync
    return model.history


def predict_cached(model, x, batch_size=32, *, steps=None):
    """Runs the head of `model` on cached feature maps.

    Args:
        model: a `keras.Model` with a `"pooler"` layer and everything
            before it frozen.
        x: `CachedFeatures` from `cache_features`, or raw images: an
            array, or a batched `tf.data.Dataset`, `keras.utils.PyDataset`
            or generator (whose labels, if any, are ignored).
        batch_size: int. Defaults to `32`.
        steps: optional int. Read at most this many batches of a dataset
            or generator `x`. Defaults to `None`: all of `x`.

    Returns:
        The head's outputs as a NumPy array: for a classifier, the class
        probabilities, as `model.predict` on the raw images gives them.

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(8, 8, 3))
    >>> x = np.random.rand(8, 8, 8, 3) * 255
    >>> cached = kgp.cache_features(model, x)
    >>> kgp.predict_cached(model, cached).shape
    (8, 3)
    >>> np.allclose(kgp.predict_cached(model, cached), model.predict(x, verbose=0),
    ...             atol=1e-3)
    True
    """
    _, head = frozen_feature_model(model)
    if isinstance(x, CachedFeatures):
        x.check_model(model, "passed as x")
    else:
        x = cache_features(model, x, batch_size=batch_size, steps=steps, pooled="auto")
    if x.pooled:
        head = after_pooler(model)
    if isinstance(x.maps, ShardedArray):
        return head.predict(CachedSequence(x.maps, batch_size=batch_size), verbose=0)
    return head.predict(x.maps, batch_size=batch_size, verbose=0)
