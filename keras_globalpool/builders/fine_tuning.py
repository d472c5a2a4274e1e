"""`unfreeze_backbone`: the second phase of fine-tuning."""

import keras

from keras_globalpool.arguments import check_positive_int
from keras_globalpool.builders.backbone_clone import graph_leaves


def _is_batch_norm(layer):
    return isinstance(layer, keras.layers.BatchNormalization)


def unfreeze_backbone(model, num_layers=None):
    """Unfreezes the top of a built model's backbone, BatchNorm excepted.

    The usual recipe: train the head with the backbone frozen (the
    builders' default) until it converges; then call this function,
    recompile with a learning rate about ten times lower, and train again.
    Recompiling is required for the change to take effect. BatchNorm layers
    stay frozen: they keep their moving statistics and their `gamma` and
    `beta`, since a small dataset estimates both badly. Nested Functional
    and Sequential blocks count by their own layers; a BatchNorm inside a
    custom layer or a subclassed model stays frozen too.

    Args:
        model: a model from `kgp.build_classifier` or the other builders, or
            any model with a sub-model named `"backbone"`.
        num_layers: optional int >= 1. Unfreeze only the top `num_layers`
            backbone layers that hold weights, in the backbone's order,
            nested blocks' layers included (BatchNorm layers count, and stay
            frozen). Defaults to `None`: every layer.

    Returns:
        The list of the backbone layers made trainable.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 5, input_shape=(96, 96, 3), weights=None)
    >>> model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    >>> # ... model.fit(...) trains the head ...
    >>> unfrozen = kgp.unfreeze_backbone(model, num_layers=10)
    >>> model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy")
    >>> len(unfrozen) < 10
    True
    """
    check_positive_int("num_layers", num_layers, allow_none=True)
    backbone = model.get_layer("backbone")
    weighted = [layer for layer in graph_leaves(backbone) if layer.weights]
    top = weighted if num_layers is None else weighted[-num_layers:]
    backbone.trainable = True
    for layer in weighted:
        layer.trainable = False
    unfrozen = [layer for layer in top if not _is_batch_norm(layer)]
    for layer in unfrozen:
        layer.trainable = True
        # Setting `trainable` reaches every sublayer of a custom layer.
        for sublayer in layer._flatten_layers():
            if _is_batch_norm(sublayer):
                sublayer.trainable = False
    return unfrozen
