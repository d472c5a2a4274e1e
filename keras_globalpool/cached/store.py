"""Where `cache_features` puts the maps as the backbone runs: RAM or `.npy` shards.

`MemoryStore` keeps them in RAM. `ShardWriter` streams them into a cache
folder (`files.Folder`), one shard of whole batches at a time, so the
maps are never all in memory; `ShardedArray` reads them back lazily.
"""

import bisect
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from keras_globalpool.cached import files


class ShardedArray:
    """A read-only array of rows kept in memory-mapped `.npy` shards.

    It has `shape`, `dtype`, `len` and `ndim`; indexing with an int, a
    slice or an array of row indices reads only those rows, cast to
    `dtype` (earlier float16 shards of a float32 cache included).
    `np.asarray` reads it whole.
    """

    def __init__(self, shards, dtype, row_shape, owner=None):
        self.shards = shards
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.starts = np.cumsum([0] + [len(shard) for shard in shards])
        self.shape = (int(self.starts[-1]), *self.row_shape)
        self.ndim = len(self.shape)
        self._owner = owner  # Keeps a temporary folder alive while in use.

    def __len__(self):
        return self.shape[0]

    @property
    def nbytes(self):
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def take(self, rows):
        """The rows `rows` (an int array), in that order, as an ndarray."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        if not len(rows):
            return out
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"row index out of range for {len(self)} rows")
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        if np.all(rows[1:] >= rows[:-1]):  # Sorted: each shard's rows in a run.
            bounds = np.searchsorted(shard_of, np.arange(len(self.shards) + 1))
            for index in range(len(self.shards)):
                begin, end = bounds[index], bounds[index + 1]
                if begin == end:
                    continue
                local = rows[begin:end] - self.starts[index]
                shard = self.shards[index]
                if isinstance(shard, files.ShardFile) and shard.dtype == self.dtype:
                    shard.read(local, out[begin:end])  # No copy between.
                else:
                    out[begin:end] = shard[local]
            return out
        for index in np.unique(shard_of):
            where = np.flatnonzero(shard_of == index)
            local = rows[where] - self.starts[index]
            order = np.argsort(local, kind="stable")  # Near-sequential reads.
            out[where[order]] = self.shards[index][local[order]]
        return out

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        if isinstance(key, int | np.integer):
            index = bisect.bisect_right(self.starts, int(key) % len(self)) - 1
            return np.asarray(
                self.shards[index][int(key) % len(self) - self.starts[index]],
                self.dtype,
            )
        return self.take(key)

    def __array__(self, dtype=None, copy=None):
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self):
        return (
            f"ShardedArray(shape={self.shape}, dtype={self.dtype}, "
            f"shards={len(self.shards)})"
        )


def open_arrays(path, owner=None):
    """`(arrays, meta)` of the cache at `path`, each array a `ShardedArray`."""
    arrays, meta = files.read(path, lazy=True)
    return {
        key: None if value is None else ShardedArray(*value, owner=owner)
        for key, value in arrays.items()
    }, meta


class _TemporaryFolder:
    """A folder under the system's temporary one, removed once unused."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="keras_globalpool-cache-"))
        self._remove = weakref.finalize(self, shutil.rmtree, self.path, True)


class MemoryStore:
    """The maps in RAM: preallocated when the number of samples is known."""

    def __init__(self, samples):
        self.samples, self.parts, self.maps, self.filled = samples, [], None, 0
        self.labels, self.weights = [], []

    @property
    def nbytes(self):
        if self.maps is not None:
            return self.maps[: self.filled].nbytes
        return sum(part.nbytes for part in self.parts)

    def append(self, maps, y, sample_weight):
        if self.samples is not None:
            if self.maps is None:
                self.maps = np.empty((self.samples, *maps.shape[1:]), maps.dtype)
            elif self.maps.dtype != maps.dtype:
                self.maps = self.maps.astype(maps.dtype)
            self.maps[self.filled : self.filled + len(maps)] = maps
        else:
            if self.parts and self.parts[0].dtype != maps.dtype:
                self.parts = [part.astype(maps.dtype) for part in self.parts]
            self.parts.append(maps)
        self.filled += len(maps)
        self.labels.append(y)
        self.weights.append(sample_weight)

    def batches(self):
        """The stored batches, in order, as `(maps, y, sample_weight)`."""
        maps = [self.maps[: self.filled]] if self.maps is not None else list(self.parts)
        if self.maps is not None:
            labels = [_join(self.labels)]
            weights = [_join(self.weights)]
        else:
            labels, weights = self.labels, self.weights
        return zip(maps, labels, weights, strict=True)

    def finish(self):
        if self.maps is not None:
            maps = self.maps[: self.filled]
        else:
            maps = np.concatenate(self.parts)
        return maps, _join(self.labels), _join(self.weights)


def _join(parts):
    return None if parts[0] is None else np.concatenate(parts)


class ShardWriter:
    """Streams batches into a cache folder as shards of at least `shard_bytes`.

    Batches are joined into one shard until it holds `shard_bytes`; a
    batch's maps promoted from float16 to float32 promote the rows waiting
    with them, while shards already written stay float16 (cast on read).
    """

    def __init__(self, path, overwrite, shard_bytes, temporary=None):
        self.folder = files.Folder(path, overwrite)
        self.overwrite, self.shard_bytes = overwrite, shard_bytes
        self.temporary = temporary
        self.waiting = []

    def append(self, maps, y, sample_weight):
        if self.waiting and self.waiting[0][0].dtype != maps.dtype:
            self.waiting = [(m.astype(maps.dtype), a, b) for m, a, b in self.waiting]
        self.waiting.append((maps, y, sample_weight))
        if sum(part[0].nbytes for part in self.waiting) >= self.shard_bytes:
            self._flush()

    def _flush(self):
        if not self.waiting:
            return
        maps, y, sample_weight = zip(*self.waiting, strict=True)
        self.folder.add_shard(
            {
                "maps": np.concatenate(maps),
                "y": _join(y),
                "sample_weight": _join(sample_weight),
            }
        )
        self.waiting = []

    def abort(self):
        self.folder.abort()

    def finish(self, meta):
        """`(arrays, meta)`: the folder complete, reopened lazily."""
        self._flush()
        self.folder.finish(meta, self.overwrite)
        return open_arrays(self.folder.path, owner=self.temporary)


def temporary_writer(shard_bytes):
    """A `ShardWriter` into a temporary folder removed when the cache is unused."""
    temporary = _TemporaryFolder()
    return ShardWriter(temporary.path / "cache", False, shard_bytes, temporary)
