"""Cached-feature training: run a frozen backbone once, then train only the head.

With the backbone frozen, running it every epoch recomputes the same feature
maps again and again. `cache_features` runs it once and keeps the maps from
before the pooling, so attention and GeM poolers still train; `fit_cached`
trains the layers after the backbone on them. Those layers are the model's
own objects, so the trained weights are in the full model, which goes on
predicting from raw images.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_globalpool.layers.frozen_batch_norm import FrozenBatchNormalization
from keras_globalpool.pooler import POOLER_NAME, split_at_pooler

# The largest finite float16.
FLOAT16_MAX = float(np.finfo("float16").max)
# The smallest normal float16, 2**-14: below it float16 loses precision.
FLOAT16_TINY = float(np.finfo("float16").tiny)


@dataclasses.dataclass(frozen=True)
class CachedFeatures:
    """Feature maps of a frozen backbone, computed once by `cache_features`.

    Pass it to `fit_cached` or `predict_cached` in place of the images, to
    train or run several heads on one backbone's output.

    Args:
        maps: array of shape `(samples, *feature_map_shape)`: `float16`
            when it keeps every value's precision (see `cache_features`),
            else `float32` (or `float64`).

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(8, 8, 3))
    >>> cached = kgp.cache_features(model, np.random.rand(4, 8, 8, 3) * 255)
    >>> isinstance(cached, kgp.CachedFeatures), len(cached), cached.maps.shape
    (True, 4, (4, 6, 6, 4))
    """

    maps: np.ndarray

    def __len__(self):
        return len(self.maps)


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


def _frozen_feature_model(model):
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


def _acts_only_in_training(layer):
    # Keras's random layers (Random* augmentation, Dropout and its kin,
    # GaussianNoise, attention and RNN dropout) hold a SeedGenerator exactly
    # when they draw numbers, which they do only in training. A trainable
    # BatchNormalization normalizes with batch statistics in training, even
    # without weights to train (center=False, scale=False).
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.trainable and not isinstance(layer, FrozenBatchNormalization)
    return any(
        isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values()
    )


def _check_inference_equals_training(features):
    # _flatten_layers reaches nested models and layers held by other layers.
    found = [
        f"{layer.name!r} ({type(layer).__name__})"
        for layer in features._flatten_layers(include_self=False)
        if _acts_only_in_training(layer)
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


def cache_features(model, x, batch_size=32, verbose=0):
    """Runs `model`'s frozen backbone once over `x` and keeps its feature maps.

    The maps are taken before pooling, in inference mode, batch by batch.
    They are stored as float16 (half the memory) when that keeps every
    value's precision: for each image and channel, the largest magnitude
    is 0 or in float16's normal range `[2**-14, 65504]`, so every value is
    within `2**-11` (float16's rounding) of that largest magnitude, and
    every value of at least `2**-14` within `2**-11` of itself. Otherwise
    (features around 1e-7, or above 65504, or not finite) they keep the
    backbone's dtype, at least float32.

    Args:
        model: a `keras.Model` with a `"pooler"` layer and everything
            before it frozen, such as a `kgp.build_classifier` model.
        x: array of raw images, what `model` takes.
        batch_size: int. Images per backbone call. Defaults to `32`.
        verbose: int. `1` shows a progress bar. Defaults to `0`.

    Returns:
        `CachedFeatures`.

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(8, 8, 3))
    >>> cached = kgp.cache_features(model, np.random.rand(4, 8, 8, 3) * 255)
    >>> cached.maps.shape, cached.maps.dtype
    ((4, 6, 6, 4), dtype('float16'))
    """
    features, _ = _frozen_feature_model(model)
    pooler = model.get_layer(POOLER_NAME)
    data_format = getattr(pooler, "data_format", None)
    data_format = data_format or keras.config.image_data_format()
    channel_axis = 1 if data_format == "channels_first" else -1
    maps = None
    progress = keras.utils.Progbar(len(x), verbose=verbose)
    for start in range(0, len(x), batch_size):
        batch = keras.ops.convert_to_numpy(
            features.predict_on_batch(x[start : start + batch_size])
        )
        if maps is None:
            maps = np.empty((len(x), *batch.shape[1:]), "float16")
        if maps.dtype == np.float16 and not _float16_keeps_precision(
            batch, channel_axis
        ):
            maps = maps.astype(np.promote_types(batch.dtype, "float32"))
        maps[start : start + len(batch)] = batch
        progress.add(len(batch))
    return CachedFeatures(maps)


def _as_features(model, x, batch_size):
    return x if isinstance(x, CachedFeatures) else cache_features(model, x, batch_size)


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


class _FullModelCallbacks(keras.callbacks.CallbackList):
    """The user's callbacks, as `model.fit` runs them, while the head trains.

    `head.fit` calls the hooks, but each callback's `model` is the full
    model, so checkpoints save a model that takes images and callbacks read
    and set `model.optimizer`, the optimizer that trains. A stop requested
    on the full model (EarlyStopping, TerminateOnNaN) is passed to the
    head, whose flag `fit` checks, and so is the first epoch that
    BackupAndRestore sets when it resumes.
    """

    def __init__(self, callbacks, model, head, **params):
        super().__init__(
            callbacks,
            add_history=True,
            add_progbar=params["verbose"] != 0,
            model=model,
            **params,
        )
        self._full_model, self._head = model, head
        head.history = model.history  # What `head.fit` returns.

    def on_train_begin(self, logs=None):
        self._full_model.stop_training = False  # As `model.fit` starts.
        super().on_train_begin(logs)
        self._head._initial_epoch = self._full_model._initial_epoch

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self._pass_stop_to_head()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._pass_stop_to_head()

    def _pass_stop_to_head(self):
        if self._full_model.stop_training:
            self._head.stop_training = True


def fit_cached(
    model,
    x,
    y,
    *,
    batch_size=32,
    epochs=1,
    verbose="auto",
    callbacks=None,
    validation_data=None,
    shuffle=True,
    allow_inference_mode=False,
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
        x: raw images, or `CachedFeatures` of them from `cache_features`
            (to reuse one cache for several heads).
        y: the targets, as for `model.fit`.
        batch_size: int. Defaults to `32`.
        epochs: int. Defaults to `1`.
        verbose: as for `model.fit`. Defaults to `"auto"`.
        callbacks: optional list of `keras.callbacks.Callback`.
        validation_data: optional `(x_val, y_val)`, raw images or
            `CachedFeatures`.
        shuffle: bool. Shuffle the training samples each epoch. Defaults to
            `True`.
        allow_inference_mode: bool. Train even when layers before the
            pooler act only in training (such as EfficientNet's stochastic
            depth dropout), on the maps `model.predict` computes, unlike
            `model.fit`. Defaults to `False`: such a model is refused.

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
    features, head = _frozen_feature_model(model)
    if not allow_inference_mode:
        _check_inference_equals_training(features)
    _compile_like(head, model)
    maps = _as_features(model, x, batch_size).maps
    if validation_data is not None:
        x_val, y_val = validation_data
        validation_data = (_as_features(model, x_val, batch_size).maps, y_val)
    callbacks = _FullModelCallbacks(
        callbacks,
        model,
        head,
        verbose=verbose,
        epochs=epochs,
        steps=math.ceil(len(maps) / batch_size),
    )
    if keras.backend.backend() == "jax":
        # A callback's `model` syncs that model's JAX training state into
        # the variables before it reads them; the state is the head's.
        model.jax_state_sync = head.jax_state_sync
    try:
        head.fit(
            maps,
            y,
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


def predict_cached(model, x, batch_size=32):
    """Runs the head of `model` on cached feature maps.

    Args:
        model: a `keras.Model` with a `"pooler"` layer and everything
            before it frozen.
        x: `CachedFeatures` from `cache_features`, or raw images.
        batch_size: int. Defaults to `32`.

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
    _, head = _frozen_feature_model(model)
    return head.predict(_as_features(model, x, batch_size).maps, verbose=0)
