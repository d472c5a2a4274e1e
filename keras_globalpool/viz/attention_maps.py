"""Attention maps: where an attention pooling layer looked, per image."""

import keras
import numpy as np
from keras import ops

from keras_globalpool.pooler import ATTENTION_TYPES, find_pooling_layer
from keras_globalpool.viz.heatmaps import (
    image_batch,
    normalize_heatmaps,
    resize_heatmaps,
    spatial_size,
)
from keras_globalpool.viz.layout_errors import channels_first_cpu_errors
from keras_globalpool.viz.pooling_graph import (
    data_format_of,
    image_feature_map,
    model_input,
)


def attention_maps(model, images, normalize=False, layer_name=None, batch_size=32):
    """The attention scores of a model's attention pooling layer.

    The scores are the weights the layer gives each feature-map position
    (they sum to 1 over the positions; for the multi-head poolings, SimPool
    and MAP, the mean over the heads and latent queries, which sums to 1
    too), resized bilinearly to the images' height and width with
    half-pixel centres. Use `normalize=True` to scale
    each map to [0, 1] for display, as `class_activation_maps` does.

    Args:
        model: a functional or Sequential `keras.Model` with one image input
            and a top-level attention pooling layer
            (`GlobalAttentionPooling`, `GlobalGatedAttentionPooling`,
            `GlobalSimPooling` or `GlobalMultiHeadAttentionPooling`); the
            backbone before it may be a nested sub-model.
        images: array of shape `(batch, height, width, channels)`, or
            `(batch, channels, height, width)` when the layer's
            `data_format` is `"channels_first"`.
        normalize: bool. Scale each map to [0, 1] by its minimum and
            maximum. Defaults to `False`.
        layer_name: optional string. The attention layer's name. Defaults
            to the layer named `"pooler"`, else the model's only
            attention pooling layer.
        batch_size: int. Images per forward pass. Defaults to `32`.

    Returns:
        float32 NumPy array of shape `(batch, height, width)`.

    Raises:
        ValueError: if the model has channels_first convolutions that
            TensorFlow cannot run on this CPU (no oneDNN, no GPU).

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=4)])
    >>> model = kgp.build_classifier(
    ...     backbone, 3, input_shape=(32, 32, 3), pooling="attention")
    >>> images = np.random.rand(4, 32, 32, 3) * 255
    >>> kgp.attention_maps(model, images).shape
    (4, 32, 32)
    """
    images = image_batch(images)
    pool = find_pooling_layer(model, layer_name, layer_types=ATTENTION_TYPES)
    if not isinstance(pool, ATTENTION_TYPES):
        names = ", ".join(cls.__name__ for cls in ATTENTION_TYPES)
        raise ValueError(
            "`attention_maps` needs an attention pooling layer (one of "
            f"{{{names}}}, or a subclass), and layer "
            f"{pool.name!r} is a {type(pool).__name__}. Pass `layer_name` to "
            f"name the attention layer. Received: layer_name={layer_name!r}"
        )
    feature_model = keras.Model(model_input(model), image_feature_map(pool))
    maps = []
    with channels_first_cpu_errors(model):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            features = feature_model(batch, training=False)
            _, scores = pool(features, return_attention_scores=True)
            maps.append(_mean_over_heads(ops.convert_to_numpy(scores), batch))
    maps = resize_heatmaps(
        np.concatenate(maps), spatial_size(images, data_format_of(pool))
    )
    return normalize_heatmaps(maps) if normalize else maps


def _mean_over_heads(scores, images):
    """Scores of shape `(batch, *spatial)`: multi-head ones averaged."""
    scores = np.asarray(scores, "float32")
    heads = tuple(range(1, scores.ndim - (np.ndim(images) - 2)))
    return scores.mean(axis=heads) if heads else scores
