"""keras-globalpool: global-pooling layers and transfer-learning heads for Keras 3."""

from keras_globalpool import pool_ops, reference, viz
from keras_globalpool.builders.backbones import BACKBONES
from keras_globalpool.builders.classifier import build_classifier
from keras_globalpool.builders.feature_extractor import build_feature_extractor
from keras_globalpool.builders.fine_tuning import unfreeze_backbone
from keras_globalpool.builders.multiscale import build_multiscale_classifier
from keras_globalpool.cached import (
    CachedFeatures,
    cache_features,
    fit_cached,
    predict_cached,
)
from keras_globalpool.deployment import export, load_exported
from keras_globalpool.layers import (
    BaseAttentionPooling,
    BaseGlobalPooling,
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
from keras_globalpool.pooler import split_at_pooler
from keras_globalpool.registry import POOLINGS, custom_objects, get
from keras_globalpool.safe_loading import load_model
from keras_globalpool.serving import export_saved_model
from keras_globalpool.viz import (
    PooledFeatureMonitor,
    attention_maps,
    class_activation_maps,
    save_overlay,
)

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "BackbonePreprocessing",
    "BaseAttentionPooling",
    "BaseGlobalPooling",
    "CachedFeatures",
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
    "POOLINGS",
    "PooledFeatureMonitor",
    "attention_maps",
    "build_classifier",
    "build_feature_extractor",
    "build_multiscale_classifier",
    "cache_features",
    "class_activation_maps",
    "custom_objects",
    "export",
    "export_saved_model",
    "fit_cached",
    "get",
    "load_exported",
    "load_model",
    "pool_ops",
    "predict_cached",
    "reference",
    "save_overlay",
    "split_at_pooler",
    "unfreeze_backbone",
    "viz",
]
