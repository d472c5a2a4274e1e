"""A cache folder on disk: `.npy` shards and a manifest, written atomically.

The folder is written under a temporary sibling name, each shard through
a temporary file that is synced and renamed, the manifest last, and only
then renamed into place: an interrupted write leaves no folder under the
cache's name, and a folder without a complete manifest is never read.
"""

import json
import os
import shutil
import uuid
import weakref
from pathlib import Path

import numpy as np

FORMAT = "keras_globalpool.cache"
VERSION = 1
# Rows per shard when not given: shards of about 64 MiB.
SHARD_BYTES = 64 * 2**20
MANIFEST = "manifest.json"
# What a cache records beside its arrays, and its values for a cache of
# one view of maps from an unknown backbone.
DEFAULT_META = {"fingerprint": None, "views": 1, "pooler": None}


def _sync_file(path, write):
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _sync_dir(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _describe(array):
    if array is None:
        return None
    return {"dtype": array.dtype.str, "row_shape": list(array.shape[1:])}


class Folder:
    """A cache folder being written: shards now, the manifest and rename at `finish`.

    Creating it checks `path` (an existing cache without `overwrite`:
    `FileExistsError`) and creates the temporary sibling folder, so an
    unwritable parent fails before any work. Use it as a context manager:
    an exception (KeyboardInterrupt included) before `finish` removes the
    temporary folder.
    """

    def __init__(self, path, overwrite=False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(
                f"A cache already exists at {self.path}. Pass `overwrite=True` "
                "to replace it, or choose another path."
            )
        # On the same filesystem, so that the final rename is atomic.
        self.temporary = (
            self.path.parent
            / f".{self.path.name}.partial-{os.getpid()}-{uuid.uuid4().hex}"
        )
        self.temporary.mkdir()
        self.shards = []
        self.descriptions = {}
        self.samples = 0
        self.finished = False

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if not self.finished:
            self.abort()

    def abort(self):
        shutil.rmtree(self.temporary, ignore_errors=True)

    def add_shard(self, arrays):
        """Writes one shard of `arrays`: `maps`, `y`, `sample_weight` or `None`."""
        index = len(self.shards)
        if index == 0:
            (self.temporary / "v0").mkdir()
        rows = len(arrays["maps"])
        shard = {"view": 0, "rows": rows, "dtypes": {}}
        for key, array in arrays.items():
            if array is None:
                self.descriptions.setdefault(key, None)
                continue
            name = f"v0/{key}-{index:05d}.npy"
            part = np.ascontiguousarray(array)
            _sync_file(self.temporary / name, lambda f, part=part: np.save(f, part))
            shard[key] = name
            shard["dtypes"][key] = part.dtype.str
            description = self.descriptions.get(key)
            if description is None:
                self.descriptions[key] = _describe(part)
            else:  # The widest dtype: float16 maps promoted to float32 later.
                description["dtype"] = np.promote_types(
                    description["dtype"], part.dtype
                ).str
        self.shards.append(shard)
        self.samples += rows

    def finish(self, meta=None, overwrite=False):
        """Writes the manifest and renames the folder into place.

        `meta` is what `read` returns beside the arrays: `fingerprint`,
        `views` and `pooler` (see `CachedFeatures`).
        """
        meta = {**DEFAULT_META, **(meta or {})}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "complete": True,
            "samples": self.samples,
            **meta,
            "arrays": self.descriptions,
            "shards": self.shards,
        }
        text = json.dumps(manifest, indent=1).encode()
        path, old = self.path, None
        try:
            _sync_file(self.temporary / MANIFEST, lambda f: f.write(text))
            if self.shards:
                _sync_dir(self.temporary / "v0")
            _sync_dir(self.temporary)
            if path.exists():
                if not overwrite:
                    raise FileExistsError(
                        f"A cache already exists at {path}. Pass "
                        "`overwrite=True` to replace it, or choose another path."
                    )
                old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
                os.rename(path, old)
            os.rename(self.temporary, path)
            self.finished = True
            _sync_dir(path.parent)
        except BaseException:
            if not self.finished:
                self.abort()
                if old is not None and not path.exists():
                    os.rename(old, path)  # Put the old cache back.
            raise
        if old is not None:
            shutil.rmtree(old)


def write(path, arrays, meta=None, shard_rows=None, overwrite=False):
    """Writes `arrays` (`maps`, `y`, `sample_weight`; `None` for absent) to `path`."""
    maps = arrays["maps"]
    row_bytes = max(1, maps[:1].nbytes)
    rows = shard_rows or max(1, SHARD_BYTES // row_bytes)
    with Folder(path, overwrite) as folder:
        for start in range(0, len(maps), rows):
            folder.add_shard(
                {
                    key: None if array is None else array[start : start + rows]
                    for key, array in arrays.items()
                }
            )
        if not folder.shards:
            folder.descriptions = {key: _describe(a) for key, a in arrays.items()}
        folder.finish(meta, overwrite)


class ShardFile:
    """The rows of one `.npy` shard, read on demand with positioned reads.

    Unlike a memory map, whose pages count in the process's resident memory
    once touched, each read copies only the rows asked for and leaves the
    file's pages to the system's cache. Runs of consecutive rows are read
    at once.
    """

    def __init__(self, filename, dtype, offset, shape):
        self.filename, self.dtype = str(filename), np.dtype(dtype)
        self.offset, self.shape = offset, tuple(shape)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._descriptor = None

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        """The rows `rows` (an int, or an int array sorted ascending)."""
        if isinstance(rows, int | np.integer):
            return self[np.array([rows])][0]
        return self.read(rows, np.empty((len(rows), *self.shape[1:]), self.dtype))

    def read(self, rows, out):
        """Reads the rows `rows` (sorted ascending) into the C-contiguous `out`."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return out
        if self._descriptor is None:
            self._descriptor = os.open(self.filename, os.O_RDONLY)
            self._close = weakref.finalize(self, os.close, self._descriptor)
        # Straight into `out`, one read per run of consecutive rows.
        flat = memoryview(out.reshape(-1).view(np.uint8))
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
        for begin, end in zip(starts, [*starts[1:], len(rows)], strict=True):
            size = (end - begin) * self.row_bytes
            position = self.offset + int(rows[begin]) * self.row_bytes
            buffer = flat[begin * self.row_bytes : end * self.row_bytes]
            if os.preadv(self._descriptor, [buffer], position) != size:
                raise ValueError(f"{self.filename} is shorter than its header says")
        return out


def _damaged(path, reason):
    return ValueError(
        f"The cache at {path} is incomplete or damaged: {reason}. Write it "
        "again with `cache_features(...)` and `save(path, overwrite=True)`."
    )


def _read_shard(path, file, rows, description, dtype, lazy):
    expected_shape = (rows, *description["row_shape"])
    try:
        with open(path / file, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, found = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, found = np.lib.format.read_array_header_2_0(f)
            data_bytes = int(np.prod(shape)) * found.itemsize
            if found != np.dtype(dtype):
                raise _damaged(path, f"{file} holds {found}, not {dtype}")
            if shape != expected_shape or fortran:
                raise _damaged(
                    path, f"{file} holds shape {shape}, not {expected_shape}"
                )
            offset = f.tell()
            if os.fstat(f.fileno()).st_size != offset + data_bytes:
                raise _damaged(path, f"{file} is not {data_bytes} bytes of data")
            if lazy:
                return ShardFile(path / file, found, offset, shape)
            return np.fromfile(f, found, count=int(np.prod(shape))).reshape(shape)
    except (OSError, ValueError) as error:
        if "incomplete or damaged" in str(error):
            raise
        raise _damaged(path, f"{file}: {error}") from error


def read(path, lazy=False):
    """`(arrays, meta)` of the cache at `path`; `meta` as `Folder.finish` takes it.

    Each array is read whole, or with `lazy=True` is a list of read-only
    memory-mapped shards (`None` for an absent array).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"No cache at {path}: no such folder.")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise _damaged(path, f"no readable {MANIFEST} ({error})") from error
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise _damaged(path, f"not a {FORMAT} version {VERSION} manifest")
    if manifest.get("complete") is not True:
        raise _damaged(path, "its manifest is not marked complete")
    arrays = {}
    for key, description in manifest["arrays"].items():
        if description is None:
            arrays[key] = None
            continue
        dtype = np.dtype(description["dtype"])
        parts = [
            _read_shard(
                path,
                shard[key],
                shard["rows"],
                description,
                shard.get("dtypes", {}).get(key, description["dtype"]),
                lazy,
            )
            for shard in manifest["shards"]
        ]
        if lazy:
            arrays[key] = (parts, dtype, tuple(description["row_shape"]))
        elif parts:
            arrays[key] = np.concatenate(parts).astype(dtype, copy=False)
        else:
            arrays[key] = np.empty((0, *description["row_shape"]), dtype)
    if sum(shard["rows"] for shard in manifest["shards"]) != manifest["samples"]:
        raise _damaged(path, f"its shards do not hold {manifest['samples']} rows")
    meta = {key: manifest.get(key, value) for key, value in DEFAULT_META.items()}
    return arrays, meta
