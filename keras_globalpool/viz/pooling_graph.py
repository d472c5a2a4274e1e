"""Where a model pools: its global-pooling layer and the feature map it reads."""

import keras


def data_format_of(layer):
    """The layer's `data_format`, or Keras's default when it has none."""
    return getattr(layer, "data_format", None) or keras.config.image_data_format()


def _single(model, tensors, what):
    if len(tensors) != 1:
        raise ValueError(
            f"Model {model.name!r} must have a single {what}. "
            f"Received a model with {len(tensors)} {what}s."
        )
    return tensors[0]


def model_input(model):
    """The model's single input tensor, for building sub-models from it."""
    return _single(model, model.inputs, "image input")


def model_output(model):
    """The model's single output tensor."""
    return _single(model, model.outputs, "output")


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
