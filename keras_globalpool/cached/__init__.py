"""Cached-feature training: run a frozen backbone once, then train only the head.

With the backbone frozen, running it every epoch recomputes the same feature
maps again and again. `cache_features` runs it once and keeps the maps from
before the pooling, so attention and GeM poolers still train; `fit_cached`
trains the layers after the backbone on them. Those layers are the model's
own objects, so the trained weights are in the full model, which goes on
predicting from raw images.

The images come as `model.fit` takes them: arrays, or a `tf.data.Dataset`,
`keras.utils.PyDataset` or generator read one batch at a time (`inputs`).
"""

from keras_globalpool.cached.caching import cache_features
from keras_globalpool.cached.features import CachedFeatures
from keras_globalpool.cached.training import fit_cached, predict_cached

__all__ = ["CachedFeatures", "cache_features", "fit_cached", "predict_cached"]
