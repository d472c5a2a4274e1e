"""Seeing what the pooling sees: CAM, attention maps, overlays, monitoring.

The `explain` subcommand lives in `keras_globalpool.viz.explain`, which the
CLI imports; it is not re-exported here, so the module keeps its name.
"""

from keras_globalpool.viz.attention_maps import attention_maps
from keras_globalpool.viz.cam import class_activation_maps, resolve_method
from keras_globalpool.viz.monitor import PooledFeatureMonitor, pooled_feature_stats
from keras_globalpool.viz.overlay import save_overlay
from keras_globalpool.viz.overlay_grid import overlay_grid

__all__ = [
    "PooledFeatureMonitor",
    "attention_maps",
    "class_activation_maps",
    "overlay_grid",
    "pooled_feature_stats",
    "resolve_method",
    "save_overlay",
]
