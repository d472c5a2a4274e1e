"""The global-pooling layers, and the layers the builders put into models."""

from keras_globalpool.layers.attention_pooling import GlobalAttentionPooling
from keras_globalpool.layers.average_pooling import GlobalAveragePooling
from keras_globalpool.layers.base_attention_pooling import BaseAttentionPooling
from keras_globalpool.layers.base_global_pooling import BaseGlobalPooling
from keras_globalpool.layers.constraints import ValueRange
from keras_globalpool.layers.covariance_pooling import GlobalCovariancePooling
from keras_globalpool.layers.csra import ClassSpecificResidualAttention
from keras_globalpool.layers.frozen_batch_norm import FrozenBatchNormalization
from keras_globalpool.layers.gated_attention_pooling import (
    GlobalGatedAttentionPooling,
)
from keras_globalpool.layers.gem_pooling import GlobalGeMPooling
from keras_globalpool.layers.lse_pooling import GlobalLSEPooling
from keras_globalpool.layers.max_pooling import GlobalMaxPooling
from keras_globalpool.layers.mixed_pooling import GlobalMixedPooling
from keras_globalpool.layers.multi_head_attention_pooling import (
    GlobalMultiHeadAttentionPooling,
)
from keras_globalpool.layers.preprocessing import BackbonePreprocessing
from keras_globalpool.layers.sim_pooling import GlobalSimPooling

__all__ = [
    "BackbonePreprocessing",
    "BaseAttentionPooling",
    "BaseGlobalPooling",
    "ClassSpecificResidualAttention",
    "FrozenBatchNormalization",
    "GlobalAttentionPooling",
    "GlobalAveragePooling",
    "GlobalCovariancePooling",
    "GlobalGatedAttentionPooling",
    "GlobalGeMPooling",
    "GlobalLSEPooling",
    "GlobalMaxPooling",
    "GlobalMixedPooling",
    "GlobalMultiHeadAttentionPooling",
    "GlobalSimPooling",
    "ValueRange",
]
