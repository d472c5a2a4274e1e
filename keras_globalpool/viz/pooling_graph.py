"""Where a model pools: its global-pooling layer and the feature map it reads."""

import keras

from keras_globalpool.layers import BaseGlobalPooling

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

    >>> from keras_globalpool.viz.pooling_graph import find_pooling_layer
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


def data_format_of(layer):
    """The layer's `data_format`, or Keras's default when it has none."""
    return getattr(layer, "data_format", None) or keras.config.image_data_format()


def model_input(model):
    """The model's single input tensor, for building sub-models from it."""
    if len(model.inputs) != 1:
        raise ValueError(
            f"Model {model.name!r} must have a single image input. "
            f"Received a model with {len(model.inputs)} inputs."
        )
    return model.inputs[0]


def model_output(model):
    """The model's single output tensor."""
    if len(model.outputs) != 1:
        raise ValueError(
            f"Model {model.name!r} must have a single output. "
            f"Received a model with {len(model.outputs)} outputs."
        )
    return model.outputs[0]


def image_feature_map(pool):
    """The 2D feature map `pool` reads: its input tensor in the model's graph.

    Because it is the tensor in the outer graph, a sub-model built from the
    model's input to it runs through a nested backbone.
    """
    feature_map = pool.input
    if len(feature_map.shape) != 4:
        raise ValueError(
            f"Layer {pool.name!r} must pool a 2D feature map, of rank 4. "
            f"Received: input shape={tuple(feature_map.shape)}"
        )
    return feature_map
