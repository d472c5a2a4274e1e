"""`CachedFeatures`: a backbone's feature maps, with the labels that came with them."""

import dataclasses

import numpy as np

from keras_globalpool.cached import files, store
from keras_globalpool.cached.fingerprint import check_fingerprint
from keras_globalpool.cached.pooled import check_pooler


@dataclasses.dataclass(frozen=True)
class CachedFeatures:
    """Feature maps of a frozen backbone, computed once by `cache_features`.

    Pass it to `fit_cached` or `predict_cached` in place of the images, to
    train or run several heads on one backbone's output. When the images
    came with labels (and sample weights), as arrays or as the elements of
    a dataset, the cache keeps them beside the maps, row for row, and
    `fit_cached` trains on them.

    Args:
        maps: array of shape `(samples, *feature_map_shape)`: `float16`
            when it keeps every value's precision (see `cache_features`),
            else `float32` (or `float64`); or a `ShardedArray` on disk.
        y: optional array of the targets, one row per sample. Defaults to
            `None`.
        sample_weight: optional array of the sample weights, one per
            sample. Defaults to `None`.
        fingerprint: optional dict, the `backbone_fingerprint` of the model
            whose backbone computed the maps, which `load` checks. Defaults
            to `None`: not checked.
        views: int. The rows are this many views of the same samples, one
            after the other (`views * len(cache)` rows, view `k` in rows
            `k * len(cache)` to `(k + 1) * len(cache)`), which `fit_cached`
            takes in turn, one per epoch. Defaults to `1`.
        pooler: optional dict, the `describe_pooler` of the pooler whose
            outputs the rows are (the pooled shortcut), else `None`: feature
            maps from before the pooler. Defaults to `None`.

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(8, 8, 3))
    >>> cached = kgp.cache_features(model, np.random.rand(4, 8, 8, 3) * 255)
    >>> isinstance(cached, kgp.CachedFeatures), len(cached), cached.maps.shape
    (True, 4, (4, 6, 6, 4))
    """

    maps: np.ndarray
    y: np.ndarray | None = None
    sample_weight: np.ndarray | None = None
    fingerprint: dict | None = None
    views: int = 1
    pooler: dict | None = None

    def __post_init__(self):
        if not isinstance(self.views, int) or self.views < 1:
            raise ValueError(
                f"`views` must be a positive int. Received: views={self.views!r}"
            )
        if len(self.maps) % self.views:
            raise ValueError(
                f"A cache of {self.views} views must have a multiple of "
                f"{self.views} rows. Received: maps with {len(self.maps)} rows"
            )
        for name in ("y", "sample_weight"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.maps):
                raise ValueError(
                    f"`{name}` must have one row per feature map, "
                    f"{len(self.maps)}. Received: {name} with {len(value)} rows"
                )

    def __len__(self):
        """The number of samples: the rows of one view."""
        return len(self.maps) // self.views

    @property
    def pooled(self):
        """Whether the rows are pooled vectors, not feature maps."""
        return self.pooler is not None

    def meta(self):
        """What the cache records beside its arrays, as `save` writes it."""
        return {
            "fingerprint": self.fingerprint,
            "views": self.views,
            "pooler": self.pooler,
        }

    def check_model(self, model, where):
        """Raises `ValueError` unless `model` computes what the cache holds.

        Its backbone must have the cache's `fingerprint` (when recorded),
        and for a pooled cache its pooler must be the one that pooled it.
        `where` names the cache in messages: `"at <path>"`, `"passed as x"`.
        """
        check_fingerprint(self.fingerprint, model, where)
        check_pooler(self.pooler, model, where)

    def save(self, path, overwrite=False, shard_rows=None):
        """Writes the cache to the folder `path`, for `CachedFeatures.load`.

        The folder holds `.npy` shards and a `manifest.json` written last;
        it appears under `path` only once complete, so an interrupted save
        leaves nothing that `load` would read.

        Args:
            path: str or `pathlib.Path`, a folder that does not exist yet.
            overwrite: bool. Replace a cache already at `path`. Defaults
                to `False`: raise `FileExistsError`.
            shard_rows: optional int. Samples per shard file. Defaults to
                `None`: shards of about 64 MiB.

        Example:

        >>> cached = kgp.CachedFeatures(np.zeros((4, 2, 2, 3), "float16"))
        >>> cached.save("cache")
        >>> kgp.CachedFeatures.load("cache").maps.shape
        (4, 2, 2, 3)
        """
        arrays = {"maps": self.maps, "y": self.y, "sample_weight": self.sample_weight}
        arrays = {
            key: (
                value
                if value is None or isinstance(value, store.ShardedArray)
                else np.asarray(value)
            )
            for key, value in arrays.items()
        }
        files.write(path, arrays, self.meta(), shard_rows, overwrite)

    @classmethod
    def load(cls, path, model=None, lazy=False):
        """Reads a cache that `save` wrote, checking it was made by `model`'s backbone.

        Args:
            path: str or `pathlib.Path`, the folder `save` wrote.
            model: optional `keras.Model`. When given, the cache must have
                been computed by the same backbone weights (its
                `backbone_fingerprint`), and a pooled cache by its pooler,
                else `ValueError`. Defaults to `None`: not checked.
            lazy: bool. Leave the arrays on disk, as read-only
                `ShardedArray`s that read only the rows asked for (what
                `fit_cached` and `predict_cached` do). Defaults to `False`:
                read them into memory.

        Returns:
            `CachedFeatures`.
        """
        arrays, meta = (store.open_arrays if lazy else files.read)(path)
        cached = cls(**arrays, **meta)
        if model is not None:
            cached.check_model(model, f"at {path}")
        return cached
