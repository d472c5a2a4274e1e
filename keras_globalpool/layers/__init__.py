"""The global-pooling layers."""

from keras_globalpool.layers.attention_pooling import GlobalAttentionPooling
from keras_globalpool.layers.average_pooling import GlobalAveragePooling
from keras_globalpool.layers.base_global_pooling import BaseGlobalPooling
from keras_globalpool.layers.constraints import ValueRange
from keras_globalpool.layers.gem_pooling import GlobalGeMPooling
from keras_globalpool.layers.max_pooling import GlobalMaxPooling
from keras_globalpool.layers.mixed_pooling import GlobalMixedPooling

__all__ = [
    "BaseGlobalPooling",
    "GlobalAttentionPooling",
    "GlobalAveragePooling",
    "GlobalGeMPooling",
    "GlobalMaxPooling",
    "GlobalMixedPooling",
    "ValueRange",
]
