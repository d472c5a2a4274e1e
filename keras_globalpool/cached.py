"""Cached-feature training: run a frozen backbone once, then train only the head.

With the backbone frozen, running it every epoch recomputes the same feature
maps again and again. `cache_features` runs it once and keeps the maps from
before the pooling, so attention and GeM poolers still train; `fit_cached`
trains the layers after the backbone on them. Those layers are the model's
own objects, so the trained weights are in the full model, which goes on
predicting from raw images.
"""

import dataclasses

import keras
import numpy as np

# The largest finite float16.
FLOAT16_MAX = float(np.finfo("float16").max)


@dataclasses.dataclass(frozen=True)
class CachedFeatures:
    """Feature maps of a frozen backbone, computed once by `cache_features`.

    Pass it to `fit_cached` or `predict_cached` in place of the images, to
    train or run several heads on one backbone's output.

    Args:
        maps: array of shape `(samples, *feature_map_shape)`, `float16` when
            every value fits in float16, else `float32` (or `float64`).
    """

    maps: np.ndarray

    def __len__(self):
        return len(self.maps)


def _fits_float16(array):
    return bool(np.isfinite(array).all() and np.abs(array).max() <= FLOAT16_MAX)


def split_at_pooler(model):
    """Splits a model where its `"pooler"` layer takes the feature maps.

    Args:
        model: a Functional `keras.Model` with one layer named `"pooler"`,
            called once, such as a `kgp.build_classifier` model.

    Returns:
        `(features, head)`: a model from the images to the pooler's input
        (preprocessing and backbone), and a model from those maps to the
        outputs (pooler, dropout, hidden layers, predictions). Both share
        `model`'s layer objects.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 5, input_shape=(96, 96, 3), weights=None)
    >>> features, head = kgp.split_at_pooler(model)
    >>> features.output.shape, head.output.shape
    ((None, 3, 3, 1280), (None, 5))
    """
    names = [layer.name for layer in model.layers]
    if "pooler" not in names:
        raise ValueError(
            "`model` must have a layer named 'pooler' that pools the "
            "backbone's feature maps, as `kgp.build_classifier` makes. "
            f"Received: a model with layers {names}"
        )
    pooler = model.get_layer("pooler")
    try:
        maps = pooler.input
    except (AttributeError, ValueError) as error:
        raise ValueError(
            "`model`'s 'pooler' must be called once, on one feature map; "
            "cached training does not support multi-scale heads."
        ) from error
    return keras.Model(model.inputs, maps), keras.Model(maps, model.outputs)


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


def cache_features(model, x, batch_size=32, verbose=0):
    """Runs `model`'s frozen backbone once over `x` and keeps its feature maps.

    The maps are taken before pooling, in inference mode, batch by batch,
    and stored as float16 (half the memory) when every value fits in
    float16, else in the backbone's dtype (at least float32).

    Args:
        model: a `keras.Model` with a `"pooler"` layer and everything
            before it frozen, such as a `kgp.build_classifier` model.
        x: array of raw images, what `model` takes.
        batch_size: int. Images per backbone call. Defaults to `32`.
        verbose: int. `1` shows a progress bar. Defaults to `0`.

    Returns:
        `CachedFeatures`.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 5, input_shape=(96, 96, 3), weights=None)
    >>> cached = kgp.cache_features(model, np.zeros((4, 96, 96, 3)))
    >>> cached.maps.shape, cached.maps.dtype
    ((4, 3, 3, 1280), dtype('float16'))
    """
    features, _ = _frozen_feature_model(model)
    maps = None
    progress = keras.utils.Progbar(len(x), verbose=verbose)
    for start in range(0, len(x), batch_size):
        batch = keras.ops.convert_to_numpy(
            features.predict_on_batch(x[start : start + batch_size])
        )
        if maps is None:
            maps = np.empty((len(x), *batch.shape[1:]), "float16")
        if maps.dtype == np.float16 and not _fits_float16(batch):
            maps = maps.astype(np.promote_types(batch.dtype, "float32"))
        maps[start : start + len(batch)] = batch
        progress.add(len(batch))
    return CachedFeatures(maps)


def _as_features(model, x, batch_size):
    return x if isinstance(x, CachedFeatures) else cache_features(model, x, batch_size)


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
):
    """Trains the head of a model with a frozen backbone on cached feature maps.

    Equivalent to `model.fit` for a model whose layers before the pooler
    are frozen, but the backbone runs once instead of once per epoch. The
    head (the `"pooler"` and every layer after it: dropout, hidden layers,
    predictions) trains with `model`'s compile settings: each call compiles
    it afresh from `model.get_compile_config()`, so the optimizer starts
    anew, as after `model.compile`. The trained weights are `model`'s own.

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

    Returns:
        The `keras.callbacks.History` of the head's training.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 3, input_shape=(96, 96, 3), weights=None)
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> x, y = np.zeros((8, 96, 96, 3)), np.arange(8) % 3
    >>> history = kgp.fit_cached(model, x, y, epochs=2, verbose=0)
    >>> model.predict(x, verbose=0).shape  # The full model, trained head.
    (8, 3)
    """
    if not model.compiled:
        raise ValueError(
            "`model` must be compiled before `fit_cached`, which trains the "
            "head with the model's optimizer, loss and metrics. "
            "Call `model.compile(...)` first."
        )
    _, head = _frozen_feature_model(model)
    head.compile_from_config(model.get_compile_config())
    if validation_data is not None:
        x_val, y_val = validation_data
        validation_data = (_as_features(model, x_val, batch_size).maps, y_val)
    return head.fit(
        _as_features(model, x, batch_size).maps,
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=verbose,
        callbacks=callbacks,
        validation_data=validation_data,
        shuffle=shuffle,
    )


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

    >>> cached = kgp.cache_features(model, x)
    >>> kgp.predict_cached(model, cached).shape
    (8, 3)
    """
    _, head = _frozen_feature_model(model)
    return head.predict(_as_features(model, x, batch_size).maps, verbose=0)
