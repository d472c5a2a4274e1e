"""The pooler contract: the layer that pools a model's feature maps.

The builders name their pooling layer (or `Flatten`) `"pooler"`, as
keras-hub does. Cached training splits a model there, the heatmaps and the
monitor find it there, and the command line counts the head's parameters
from it.
"""

import keras

from keras_globalpool.layers import (
    BaseAttentionPooling,
    BaseGlobalPooling,
    GlobalMultiHeadAttentionPooling,
    GlobalSimPooling,
)

# keras-hub and our builders name the pooling layer this.
POOLER_NAME = "pooler"

POOLING_TYPES = (
    BaseGlobalPooling,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)

# The poolings whose call takes `return_attention_scores=True` and returns
# `(pooled, scores)`: scores of shape `(batch, *spatial)`, or with head (and
# latent-query) axes after the batch axis for the multi-head ones.
ATTENTION_TYPES = (
    BaseAttentionPooling,
    GlobalSimPooling,
    GlobalMultiHeadAttentionPooling,
)


def find_pooling_layer(model, layer_name=None, layer_types=POOLING_TYPES):
    """Returns the model's global-pooling layer.

    Looks among the model's top-level layers, so a pooling that follows a
    nested backbone sub-model (as in our builders) is found, while one
    inside a sub-model is not.

    Args:
        model: a built functional or Sequential `keras.Model`.
        layer_name: optional string. Take the layer of this name.
        layer_types: tuple of layer classes to look for. Defaults to every
            keras-globalpool layer and Keras's global poolings.

    Returns:
        The layer named `layer_name` if given; else the layer named
        `"pooler"`, whatever its type (our builders name their pooling or
        `Flatten` layer so); else the only layer of `layer_types`.

    Example:

    >>> from keras_globalpool.pooler import find_pooling_layer
    >>> backbone = keras.Sequential(
    ...     [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=4)])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(32, 32, 3))
    >>> find_pooling_layer(model).name
    'pooler'
    >>> plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(name="gap"),
    ...                           keras.layers.Dense(2)])
    >>> find_pooling_layer(plain).name
    'gap'
    """
    if layer_name is not None:
        return model.get_layer(layer_name)
    for layer in model.layers:
        if layer.name == POOLER_NAME:
            return layer
    found = [layer for layer in model.layers if isinstance(layer, layer_types)]
    if len(found) == 1:
        return found[0]
    types = ", ".join(cls.__name__ for cls in layer_types)
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no top-level layer of type {{{types}}}. "
            "Pass `layer_name` to name the pooling layer."
        )
    names = ", ".join(repr(layer.name) for layer in found)
    raise ValueError(
        f"Model {model.name!r} has several pooling layers ({names}) and none "
        f"is named {POOLER_NAME!r}. Pass `layer_name` to pick one."
    )


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

    >>> backbone = keras.Sequential(
    ...     [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(8, 8, 3))
    >>> features, head = kgp.split_at_pooler(model)
    >>> maps = features.predict(np.zeros((2, 8, 8, 3)), verbose=0)
    >>> maps.shape, head.predict(maps, verbose=0).shape
    ((2, 6, 6, 4), (2, 3))
    """
    names = [layer.name for layer in model.layers]
    if POOLER_NAME not in names:
        raise ValueError(
            f"`model` must have a layer named {POOLER_NAME!r} that pools the "
            "backbone's feature maps, as `kgp.build_classifier` makes. "
            f"Received: a model with layers {names}"
        )
    pooler = model.get_layer(POOLER_NAME)
    try:
        maps = pooler.input
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"`model`'s {POOLER_NAME!r} must be called once, on one feature map; "
            "cached training does not support multi-scale heads."
        ) from error
    return keras.Model(model.input, maps), keras.Model(maps, model.output)
