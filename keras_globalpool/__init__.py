"""keras-globalpool: global-pooling layers and transfer-learning heads for Keras 3."""

from keras_globalpool import ops, reference
from keras_globalpool.layers import (
    BaseGlobalPooling,
    GlobalAttentionPooling,
    GlobalAveragePooling,
    GlobalGeMPooling,
    GlobalMaxPooling,
    GlobalMixedPooling,
)
from keras_globalpool.registry import POOLINGS, custom_objects, get

__version__ = "0.1.0"

__all__ = [
    "BaseGlobalPooling",
    "GlobalAttentionPooling",
    "GlobalAveragePooling",
    "GlobalGeMPooling",
    "GlobalMaxPooling",
    "GlobalMixedPooling",
    "POOLINGS",
    "custom_objects",
    "get",
    "ops",
    "reference",
]
