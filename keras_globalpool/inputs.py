"""What a model's input is: a batch of images or of token ids."""

import keras


def input_embedding(model):
    """The `Embedding` layer that a model's input goes straight into, if any.

    Args:
        model: a `keras.Model` with symbolic inputs.

    Returns:
        The `Embedding` layer, or `None` (an image model).

    Example:

    >>> tokens = keras.Input((None,), dtype="int32")
    >>> embedding = keras.layers.Embedding(100, 8, mask_zero=True)
    >>> model = keras.Model(tokens, kgp.GlobalMaxPooling()(embedding(tokens)))
    >>> input_embedding(model) is embedding
    True
    """
    for node in model.inputs[0]._keras_history.operation._outbound_nodes:
        if isinstance(node.operation, keras.layers.Embedding):
            return node.operation
    return None
