"""Look-up of pooling layers by name: `get` and `custom_objects`."""

import keras

from keras_globalpool.layers import (
    ClassSpecificResidualAttention,
    GlobalAttentionPooling,
    GlobalAveragePooling,
    GlobalCovariancePooling,
    GlobalGatedAttentionPooling,
    GlobalGeMPooling,
    GlobalLSEPooling,
    GlobalMaxPooling,
    GlobalMixedPooling,
    GlobalMultiHeadAttentionPooling,
    GlobalSimPooling,
)
from keras_globalpool.layers.frozen_batch_norm import FrozenBatchNormalization
from keras_globalpool.layers.preprocessing import BackbonePreprocessing

POOLINGS = {
    "avg": GlobalAveragePooling,
    "max": GlobalMaxPooling,
    "mixed": GlobalMixedPooling,
    "attention": GlobalAttentionPooling,
    "gem": GlobalGeMPooling,
    "lse": GlobalLSEPooling,
    "gated_attention": GlobalGatedAttentionPooling,
    "map": GlobalMultiHeadAttentionPooling,
    "covariance": GlobalCovariancePooling,
    "simpool": GlobalSimPooling,
    "csra": ClassSpecificResidualAttention,
}

# Layers the builders put into models, which loading them needs as well.
BUILDER_LAYERS = (FrozenBatchNormalization, BackbonePreprocessing)


def custom_objects():
    """Every public layer by class name, for `keras.models.load_model`.

    Returns:
        dict mapping class names to classes.

    Example:

    >>> objects = kgp.custom_objects()
    >>> objects["GlobalGeMPooling"] is kgp.GlobalGeMPooling
    True
    >>> "FrozenBatchNormalization" in objects
    True
    """
    return {cls.__name__: cls for cls in (*POOLINGS.values(), *BUILDER_LAYERS)}


def get(identifier, **kwargs):
    """Returns a pooling layer for a name, a serialized dict or a layer.

    Args:
        identifier: one of `"avg"`, `"max"`, `"mixed"`, `"attention"`,
            `"gem"`, `"lse"`, `"gated_attention"`, `"map"`,
            `"covariance"`, `"simpool"`, `"csra"` (which needs
            `num_classes`); a dict from
            `keras.saving.serialize_keras_object`; or a `keras.layers.Layer`,
            returned unchanged.
        **kwargs: constructor arguments, used with a name only.

    Returns:
        A `keras.layers.Layer`.

    Example:

    >>> kgp.get("gem", p=4.0).p
    4.0
    """
    if isinstance(identifier, keras.layers.Layer):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(
            identifier, custom_objects=custom_objects()
        )
    if isinstance(identifier, str) and identifier in POOLINGS:
        return POOLINGS[identifier](**kwargs)
    names = ", ".join(repr(name) for name in POOLINGS)
    raise ValueError(
        f"Unknown pooling. `identifier` must be one of {{{names}}}, a serialized "
        f"layer dict or a layer instance. Received: identifier={identifier!r}"
    )
