"""The pooled shortcut: cache the pooled vectors when the pooler trains nothing.

A pooler without weights that acts the same in training and inference
(average, max, mixed `"concat"` and `"mean"`) gives the same vector for a
map every epoch, so the cache can hold the vectors instead of the maps
(at 7x7, 49 times less) and the head can train from the pooler's output.
"""

import json

import keras

from keras_globalpool.layers.frozen_batch_norm import FrozenBatchNormalization
from keras_globalpool.pooler import POOLER_NAME


def acts_only_in_training(layer):
    """Whether `layer` computes otherwise in training than in inference.

    Keras's random layers (Random* augmentation, Dropout and its kin,
    GaussianNoise, attention and RNN dropout) hold a SeedGenerator exactly
    when they draw numbers, which they do only in training. A trainable
    BatchNormalization normalizes with batch statistics in training, even
    without weights to train (`center=False, scale=False`).
    """
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.trainable and not isinstance(layer, FrozenBatchNormalization)
    return any(
        isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values()
    )


def describe_pooler(pooler):
    """A JSON-ready description of `pooler`: its class and config, not its name."""
    description = keras.saving.serialize_keras_object(pooler)
    description = json.loads(json.dumps(description, default=str))
    description["config"].pop("name", None)
    return description


def _why_not_poolable(pooler):
    if pooler.weights:
        return f"it has {len(pooler.weights)} weights, which training changes"
    if acts_only_in_training(pooler):
        return "it computes otherwise in training"
    return None


def use_pooled(pooled, model):
    """Whether to cache `model`'s pooled vectors, for `pooled` = `"auto"`, True, False.

    Raises `ValueError` for another value, and for `pooled=True` with a
    pooler that has weights or acts only in training.
    """
    if not (isinstance(pooled, bool) or isinstance(pooled, str) and pooled == "auto"):
        raise ValueError(
            f"`pooled` must be 'auto', True or False. Received: pooled={pooled!r}"
        )
    pooler = model.get_layer(POOLER_NAME)
    reason = _why_not_poolable(pooler)
    if pooled is True and reason is not None:
        raise ValueError(
            f"`pooled=True` caches the pooler's outputs, which needs a pooler "
            f"that trains nothing, but {pooler.name!r} "
            f"({type(pooler).__name__}) cannot: {reason}. Cache its feature "
            f"maps with `pooled=False` or 'auto'. Received: pooled=True"
        )
    return pooled is not False and reason is None


def after_pooler(model):
    """The model from `model`'s pooler's output to its outputs, same layers."""
    return keras.Model(model.get_layer(POOLER_NAME).output, model.output)


def check_pooler(stored, model, where):
    """Raises `ValueError` when a pooled cache was pooled otherwise than `model` pools.

    `stored` is the cache's `describe_pooler`, or `None` for feature maps
    (which any pooler takes).
    """
    if stored is None:
        return
    pooler = model.get_layer(POOLER_NAME)
    current = describe_pooler(pooler)
    reason = _why_not_poolable(pooler)
    if current == stored and reason is None:
        return
    if current["class_name"] != stored["class_name"]:
        difference = f"{current['class_name']}, not {stored['class_name']}"
    else:
        keys = sorted(set(current["config"]) | set(stored["config"]))
        difference = ", ".join(
            f"{key}={current['config'].get(key)!r}, not {stored['config'].get(key)!r}"
            for key in keys
            if current["config"].get(key) != stored["config"].get(key)
        )
    raise ValueError(
        f"The cache {where} holds vectors pooled by {stored['class_name']}, "
        f"but `model`'s pooler pools otherwise ({difference})"
        + ("" if reason is None else f", and {reason}")
        + ". Cache the images again for this model (`fit_cached` on the "
        "images, or `cache_features(model, images)` for the feature maps, "
        "which any pooler takes)."
    )
