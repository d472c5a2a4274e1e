"""Loading `.keras` files within bounds that follow the model: `load_model`.

A `.keras` file is a zip of `config.json`, `metadata.json`,
`model.weights.h5` and optional `assets/`. Its zip headers and HDF5 datasets
declare sizes that cost nothing to write: a file of a few KB can declare a
16 GiB weight, or a member that inflates to gigabytes, and
`keras.models.load_model` allocates what they declare (Keras 3.15 refuses only
members and datasets above 4 GiB that store next to nothing). `load_model`
checks every size against the model `config.json` describes before Keras
reads anything.
"""

import collections
import copy
import io
import json
import math
import os
import tempfile
import zipfile
import zlib

import h5py
import keras
import numpy as np

from keras_globalpool import registry

_CONFIG = "config.json"
_WEIGHTS = "model.weights.h5"
_KERAS_MEMBERS = (_CONFIG, "metadata.json", _WEIGHTS)
_ASSETS = "assets/"

# config.json, metadata.json, assets and the HDF5 file's own structure; the
# configs of keras.applications models are 0.1 to 0.3 MB.
_FIXED_ALLOWANCE = 16 << 20
# The variables, and up to five optimizer copies of each: AdamW with amsgrad
# and an EMA keeps four.
_STATE_FACTOR = 6
# HDF5 headers and groups around one variable: about 1.4 KB measured.
_BYTES_PER_VARIABLE = 4 << 10
# Keras stores members uncompressed; deflate nears 1032:1 on runs of one byte.
_MAX_RATIO = 100
_RATIO_FLOOR = 1 << 20
_CHUNK = 1 << 20
_STEP_COUNT_BYTES = 8  # an optimizer's int64 iteration count
# What Keras writes: numbers, and bfloat16 as 2-byte opaque data ("V").
_NUMERIC_KINDS = "biufcV"


def load_model(
    filepath, custom_objects=None, compile=True, safe_mode=True, max_bytes=None
):
    """Loads a `.keras` file as `keras.models.load_model` does, within bounds.

    Use it for files from others. Before Keras reads anything, it checks the
    archive against the model that `config.json` describes, built without
    weights:

    - the members are those Keras writes (`config.json`, `metadata.json`,
      `model.weights.h5`, `assets/...`), each once, with relative names;
    - each member's declared size, and their total, are at most the bound:
      `max_bytes`, or else 6 times the model's variable bytes (room for the
      optimizer state) plus 4 KiB per variable and 16 MiB (`config.json` gets
      16 MiB before the model is known); a member may not inflate more than
      100-fold beyond 1 MiB;
    - each member is read in chunks, and refused as soon as it inflates past
      its declared size: zip headers can lie;
    - every dataset in `model.weights.h5` declares at most the bytes of the
      variable Keras fills from it (of the largest variable, at paths no
      variable has), and all of them together at most the bound; links,
      data stored outside the file and non-numeric data are refused.

    Building the model is not bounded: a config that describes a huge model
    costs what that model costs, as it does in Keras. The file is read twice,
    checked here and then loaded by Keras: do not let it change meanwhile.

    Args:
        filepath: str or `pathlib.Path`. A `.keras` zip file.
        custom_objects: dict or `None`. Classes and functions to deserialize,
            added to `kgp.custom_objects()`. Defaults to `None`.
        compile: bool. Whether to compile the model after loading. Defaults
            to `True`.
        safe_mode: bool. Whether to refuse `lambda` code in the file, as in
            Keras. Defaults to `True`.
        max_bytes: int or `None`. Overrides the bound on the archive's
            members and datasets, in bytes. Defaults to `None`: the bound
            follows the model.

    Returns:
        The `keras.Model`, as `keras.models.load_model` returns it.

    Raises:
        ValueError: a size beyond the bound, or a member, name or dataset
            that Keras never writes; the message names the file, the member
            or dataset, and the declared and allowed sizes.

    Example:

    >>> inputs = keras.Input((4, 4, 3))
    >>> outputs = keras.layers.Dense(2)(kgp.GlobalGeMPooling()(inputs))
    >>> keras.Model(inputs, outputs).save("gem.keras")
    >>> kgp.load_model("gem.keras").output_shape
    (None, 2)
    """
    path = _keras_file(filepath)
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise ValueError(
            "`max_bytes` must be a positive integer or None. "
            f"Received: max_bytes={max_bytes!r}"
        )
    objects = {**registry.custom_objects(), **(custom_objects or {})}
    with _open_zip(path) as archive:
        members = _members(path, archive)
        if max_bytes:
            limit = _Bound(max_bytes, "`max_bytes`")
        else:
            limit = _Bound(
                _FIXED_ALLOWANCE,
                "config.json's share before the model is known; pass `max_bytes` "
                "to allow more",
            )
        _check_size(path, members[_CONFIG], limit)
        config = io.BytesIO()
        _stream(path, archive, members[_CONFIG], config)
        expected, model_bound = _model_datasets(
            path, config.getvalue(), objects, compile, safe_mode
        )
        limit = limit if max_bytes else model_bound
        for info in members.values():
            _check_size(path, info, limit)
        total = sum(info.file_size for info in members.values())
        if total > limit.size:
            raise ValueError(
                f"Refusing to load {path}: its members declare {total} bytes "
                f"in all, more than the {limit}."
            )
        with tempfile.TemporaryFile() as weights:
            for name, info in members.items():
                if name != _CONFIG:
                    _stream(path, archive, info, weights if name == _WEIGHTS else None)
            _check_datasets(path, weights, expected, limit)
    return keras.models.load_model(
        path, custom_objects=objects, compile=compile, safe_mode=safe_mode
    )


class _Bound:
    """A size limit, and the words that say where it comes from."""

    def __init__(self, size, source):
        self.size = size
        self.source = source

    def __str__(self):
        return f"{self.size} bytes allowed by {self.source}"


# === The archive ===


def _keras_file(filepath):
    path = os.fspath(filepath)
    if not str(path).endswith(".keras"):
        raise ValueError(
            f"`filepath` must name a `.keras` file. Received: filepath={path!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(
            "`filepath` must be an existing `.keras` zip file. "
            f"Received: filepath={path!r}"
        )
    return path


def _open_zip(path):
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"`filepath` must be a `.keras` zip file; {error}. "
            f"Received: filepath={path!r}"
        ) from error


def _members(path, archive):
    """The archive's members by name, refusing any that Keras never writes."""
    names = [info.filename for info in archive.infolist()]
    for name in names:
        parts = name.split("/")
        # Checked first, so that a path that climbs out is named as such.
        if name.startswith("/") or "\\" in name or ":" in name or ".." in parts:
            raise ValueError(
                f"Refusing to load {path}: member {name!r} must be a relative "
                "path inside the archive, without '..'."
            )
        if name not in _KERAS_MEMBERS and not name.startswith(_ASSETS):
            raise ValueError(
                f"Refusing to load {path}: member {name!r} is not one Keras "
                f"writes; a `.keras` file holds {', '.join(_KERAS_MEMBERS)} "
                f"and {_ASSETS}."
            )
    for name, count in collections.Counter(names).items():
        if count > 1:
            raise ValueError(
                f"Refusing to load {path}: member {name!r} appears twice; "
                "Keras writes each member once."
            )
    for name in (_CONFIG, _WEIGHTS):
        if name not in names:
            raise ValueError(
                f"Refusing to load {path}: it has no {name}, which every "
                "`.keras` file holds."
            )
    return {info.filename: info for info in archive.infolist()}


def _check_size(path, info, limit):
    """Refuses a member whose header declares too much, before reading it."""
    if info.file_size > limit.size:
        raise ValueError(
            f"Refusing to load {path}: member '{info.filename}' declares "
            f"{info.file_size} bytes, more than the {limit}."
        )
    if info.file_size > max(_RATIO_FLOOR, _MAX_RATIO * info.compress_size):
        raise ValueError(
            f"Refusing to load {path}: member '{info.filename}' declares "
            f"{info.file_size} bytes from {info.compress_size} stored, more "
            f"than the {_MAX_RATIO}-fold expansion allowed: a zip bomb."
        )


def _stream(path, archive, info, sink):
    """Copies a member into `sink` (or nowhere), at most its declared size."""
    # zipfile stops at the header's size without a word: reading against one
    # byte more shows a member that inflates past what its header declares.
    # Without a CRC, as zipfile would check one against that extra byte;
    # Keras checks the CRC when it loads the member.
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    probe.CRC = None
    seen = 0
    try:
        with archive.open(probe) as member:
            while chunk := member.read(_CHUNK):
                seen += len(chunk)
                if seen > info.file_size:
                    raise ValueError(
                        f"Refusing to load {path}: member '{info.filename}' "
                        f"expands beyond the {info.file_size} bytes its header "
                        "declares."
                    )
                if sink is not None:
                    sink.write(chunk)
    except (
        zipfile.BadZipFile,  # a damaged archive
        zlib.error,
        EOFError,
        RuntimeError,  # encrypted
        NotImplementedError,  # a compression method zipfile lacks
    ) as error:
        raise ValueError(
            f"Refusing to load {path}: member '{info.filename}' cannot be read: "
            f"{error}."
        ) from error


# === The weights ===


def _model_datasets(path, config_json, custom_objects, compile, safe_mode):
    """What model.weights.h5 may hold: bytes by dataset path, and the bound."""
    config = json.loads(config_json)
    if not compile:
        config["compile_config"] = None  # as Keras does
    model = keras.saving.deserialize_keras_object(
        config, custom_objects=custom_objects, safe_mode=safe_mode
    )
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Refusing to load {path}: config.json must describe a "
            f"`keras.Model`. Received: class_name={type(model).__name__!r}"
        )
    with tempfile.TemporaryDirectory() as folder:
        # Keras's own writer names each dataset as its loader looks it up.
        written = os.path.join(folder, "expected.weights.h5")
        model.save_weights(written)
        with h5py.File(written, "r") as store:
            expected = {name: d.nbytes for name, d in _datasets(path, store)}
    # ml_dtypes, which Keras imports, gives numpy bfloat16 and float8 names.
    variable_bytes = sum(
        math.prod(v.shape) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in model.weights
    )
    bound = (
        _STATE_FACTOR * (variable_bytes + _BYTES_PER_VARIABLE * len(model.weights))
        + _FIXED_ALLOWANCE
    )
    return expected, _Bound(
        bound,
        f"the model in config.json ({_STATE_FACTOR} times its {variable_bytes} "
        "variable bytes, plus allowances); pass `max_bytes` to allow more",
    )


def _datasets(path, store):
    """(path, dataset) for each link to a dataset, refusing other links."""
    links = []
    store.visititems_links(lambda name, link: links.append((name, link)))
    for name, link in links:
        if not isinstance(link, h5py.HardLink):
            raise ValueError(
                f"Refusing to load {path}: {_WEIGHTS} holds a "
                f"{type(link).__name__} at '{name}'; Keras writes none."
            )
        item = store[name]
        if isinstance(item, h5py.Dataset):
            yield name, item


def _check_datasets(path, weights, expected, limit):
    """Refuses datasets that declare more than the variables they fill."""
    # Keras never reads datasets at paths no variable has, such as an
    # optimizer's under compile=False; its int64 step count may outgrow a
    # model of float32 scalars.
    largest = max([*expected.values(), _STEP_COUNT_BYTES])
    total = 0
    with h5py.File(weights, "r") as store:
        for name, dataset in _datasets(path, store):
            declared = _declared_bytes(path, name, dataset)
            allowed = expected.get(name, largest)
            if declared > allowed:
                fills = (
                    "the variable it fills"
                    if name in expected
                    else "the largest variable of the model, as no variable "
                    "has this path,"
                )
                raise ValueError(
                    f"Refusing to load {path}: dataset '{name}' in {_WEIGHTS} "
                    f"declares shape {dataset.shape} of {dataset.dtype}, "
                    f"{declared} bytes, but {fills} holds {allowed} bytes."
                )
            total += declared
    if total > limit.size:
        raise ValueError(
            f"Refusing to load {path}: the datasets in {_WEIGHTS} declare "
            f"{total} bytes in all, more than the {limit}."
        )


def _declared_bytes(path, name, dataset):
    """The bytes reading `dataset` allocates, from its header alone."""
    dtype = dataset.dtype
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields or dtype.subdtype:
        raise ValueError(
            f"Refusing to load {path}: dataset '{name}' has dtype {dtype}; "
            "Keras writes numbers only."
        )
    if dataset.external or dataset.is_virtual:
        raise ValueError(
            f"Refusing to load {path}: dataset '{name}' stores its data outside "
            f"{_WEIGHTS}."
        )
    shape = dataset.shape
    return 0 if shape is None else math.prod(shape) * dtype.itemsize
