"""Hostile and broken `.keras` files (README, "Reliability": "File attacks tried").

A `.keras` file is a zip of `config.json`, `metadata.json` and
`model.weights.h5`. Each test writes a good file, tampers with one part, and
checks that `keras.models.load_model`, and the bounded loader
`keras_globalpool.safe_loading.load_model`, raise an error that names the
problem, return nothing, and run no code from the file. Every model the
builders make loads with `safe_mode=True`.

Bombs, files of a few KB whose headers and datasets declare gigabytes, are
refused by the bounded loader before it reads or allocates them; companion
tests show that plain Keras pays for what they declare.
"""

import base64
import functools
import json
import marshal
import re
import struct
import tracemalloc
import zipfile
import zlib

import h5py
import keras
import numpy as np
import pytest
from layer_cases import to_numpy

import keras_globalpool as kgp
from keras_globalpool.safe_loading import load_model as bounded_load_model

_SMALL = (16, 16, 3)


# === Files ===


def _all_layers_model():
    inputs = keras.Input((6, 6, 4))
    pooled = [
        kgp.GlobalAveragePooling(name="avg")(inputs),
        kgp.GlobalMaxPooling(name="max")(inputs),
        kgp.GlobalMixedPooling(mode="learned", name="mixed")(inputs),
        kgp.GlobalAttentionPooling(reduction=2, name="attention")(inputs),
        kgp.GlobalGeMPooling(p=2.5, name="gem")(inputs),
        kgp.GlobalLSEPooling(r=4.0, name="lse")(inputs),
        kgp.GlobalSimPooling(num_heads=2, gamma=2.0, name="simpool")(inputs),
    ]
    outputs = keras.layers.Dense(2, name="predictions")(
        keras.layers.Concatenate(name="concat")(pooled)
    )
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "model.keras"
    _all_layers_model().save(path)
    return path


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _with_config(good, path, edit):
    """A copy of `good` whose config.json went through `edit(config)`."""
    members = _members(good)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    return _write(path, members)


def _layer(config, name):
    return next(lay for lay in config["config"]["layers"] if lay["name"] == name)


def _set(name, **values):
    return lambda config: _layer(config, name)["config"].update(values)


LOADERS = {"keras": keras.models.load_model, "bounded": bounded_load_model}


def _load_fails(path, match, errors=(ValueError, TypeError), loader="keras", **kwargs):
    """Loading raises a matching error; `result` stays unset."""
    result = None
    with pytest.raises(errors, match=match):
        result = LOADERS[loader](path, **kwargs)
    assert result is None


# === Tampered configs: each bad field is named ===

BAD_FIELDS = {
    "unknown mode": (_set("mixed", mode="sum"), r"Received: mode='sum'"),
    "negative p": (_set("gem", p=-1.0), r"`p` must be .*Received: p=-1.0"),
    "zero p": (_set("gem", p=0), r"Received: p=0"),
    "NaN p": (_set("gem", p=float("nan")), r"Received: p=nan"),
    "infinite p": (_set("gem", p=float("inf")), r"Received: p=inf"),
    "string p": (_set("gem", p="3"), r"Received: p='3'"),
    "zero eps": (_set("gem", eps=0.0), r"Received: eps=0.0"),
    "string trainable_p": (_set("gem", trainable_p="no"), r"trainable_p='no'"),
    "negative r": (_set("lse", r=-1.0), r"`r` must be .*Received: r=-1.0"),
    "zero r": (_set("lse", r=0), r"Received: r=0"),
    "NaN r": (_set("lse", r=float("nan")), r"Received: r=nan"),
    "infinite r": (_set("lse", r=float("inf")), r"Received: r=inf"),
    "boolean r": (_set("lse", r=True), r"Received: r=True"),
    "string trainable_r": (_set("lse", trainable_r="no"), r"trainable_r='no'"),
    "zero reduction": (_set("attention", reduction=0), r"Received: reduction=0"),
    "float reduction": (_set("attention", reduction=2.5), r"reduction=2.5"),
    "unknown normalize": (_set("attention", normalize="relu"), r"normalize='relu'"),
    "zero num_heads": (_set("simpool", num_heads=0), r"Received: num_heads=0"),
    "num_heads not dividing the channels": (
        _set("simpool", num_heads=3),
        r"divisible by `num_heads`.*num_heads=3, channels=4",
    ),
    "negative gamma": (_set("simpool", gamma=-2.0), r"Received: gamma=-2.0"),
    "NaN gamma": (_set("simpool", gamma=float("nan")), r"Received: gamma=nan"),
    "string qk_norm": (_set("simpool", qk_norm="no"), r"qk_norm='no'"),
    "zero layer_norm_epsilon": (
        _set("simpool", layer_norm_epsilon=0.0),
        r"Received: layer_norm_epsilon=0.0",
    ),
    "unknown data_format": (_set("avg", data_format="NHWC"), r"data_format='NHWC'"),
    "string keepdims": (_set("max", keepdims="False"), r"keepdims='False'"),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("attack", sorted(BAD_FIELDS))
def test_bad_field_in_config_is_named(good_file, tmp_path, attack, loader):
    edit, match = BAD_FIELDS[attack]
    path = _with_config(good_file, tmp_path / "bad.keras", edit)
    _load_fails(path, match, loader=loader)
    _load_fails(path, match, loader=loader, custom_objects=kgp.custom_objects())


def test_unknown_class_is_named(good_file, tmp_path):
    def rename(config):
        _layer(config, "gem").update(
            class_name="GlobalSumPooling",
            registered_name="keras_globalpool>GlobalSumPooling",
        )

    path = _with_config(good_file, tmp_path / "bad.keras", rename)
    _load_fails(path, r"Could not locate class 'GlobalSumPooling'")


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize(
    "module, class_name",
    [("os", "system"), ("builtins", "eval"), ("subprocess", "run")],
)
def test_class_from_an_arbitrary_module_is_refused(
    good_file, tmp_path, module, class_name, loader
):
    marker = tmp_path / "ran"

    def point_elsewhere(config):
        _layer(config, "gem").update(
            module=module,
            class_name=class_name,
            registered_name=None,
            config={"args": f"touch {marker}", "cmd": f"touch {marker}"},
        )

    path = _with_config(good_file, tmp_path / "bad.keras", point_elsewhere)
    _load_fails(path, f"Could not locate class '{class_name}'", loader=loader)
    assert not marker.exists()


# === Code in the file: refused under safe_mode ===


def _lambda_attack(good, path, marker, where):
    """Swaps in a lambda that creates `marker` when it runs.

    The lambda is written as Keras writes one: its marshalled bytecode, in
    base64, under `"__lambda__"`.
    """
    source = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    payload = eval(compile(source, "<payload>", "eval"))  # noqa: S307
    code = base64.encodebytes(marshal.dumps(payload.__code__)).decode("ascii")
    function = {
        "class_name": "__lambda__",
        "config": {"code": code, "defaults": None, "closure": None},
    }

    def edit(config):
        if where == "layer":  # the "avg" pooler becomes a Lambda layer
            layer = _layer(config, "avg")
            layer.update(module="keras.layers", class_name="Lambda")
            layer["registered_name"] = None
            layer["config"] = {"name": "avg", "function": function, "arguments": {}}
        else:  # a lambda as the Dense activation
            _layer(config, "predictions")["config"]["activation"] = function

    return _with_config(good, path, edit)


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("where", ["layer", "activation"])
def test_lambda_is_refused_under_safe_mode(good_file, tmp_path, where, loader):
    marker = tmp_path / "ran"
    path = _lambda_attack(good_file, tmp_path / "evil.keras", marker, where)
    for kwargs in ({}, {"safe_mode": True}, {"custom_objects": kgp.custom_objects()}):
        _load_fails(path, "safe_mode", loader=loader, **kwargs)
    assert not marker.exists()


def test_the_lambda_attack_is_real(good_file, tmp_path):
    """Without safe_mode the tampered file runs its code: the attack works."""
    marker = tmp_path / "ran"
    path = _lambda_attack(good_file, tmp_path / "evil.keras", marker, "layer")
    try:
        keras.models.load_model(path, safe_mode=False)
    except Exception:  # noqa: BLE001 - the shapes no longer fit; the code ran first
        pass
    assert marker.exists()


# === Broken files: a clear error, no model ===


BROKEN_ARCHIVES = {
    "truncated zip": (lambda good: good.read_bytes()[: good.stat().st_size // 2]),
    "random bytes": (lambda good: np.random.default_rng(0).bytes(4096)),
    "empty file": (lambda good: b""),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("damage", sorted(BROKEN_ARCHIVES))
def test_broken_archive(good_file, tmp_path, damage, loader):
    path = tmp_path / "broken.keras"
    path.write_bytes(BROKEN_ARCHIVES[damage](good_file))
    _load_fails(path, r"\.keras. zip file", loader=loader)


def _weights(good, path, edit):
    """A copy of `good` whose weights file went through `edit(h5_file)`."""
    members = _members(good)
    weights = path.with_suffix(".h5")
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "r+") as store:
        edit(store)
    members["model.weights.h5"] = weights.read_bytes()
    return _write(path, members)


def _group(store, class_name):
    """The weights group of the (only) layer of `class_name`."""
    (name,) = [key for key in store["layers"] if key.startswith(class_name)]
    return store["layers"][name]["vars"]


def _drop_variables(store):
    group = _group(store, "global_attention_pooling")
    for key in list(group):
        del group[key]


def _wrong_shape(store):
    group = _group(store, "global_attention_pooling")
    kernel = group["0"][()]
    del group["0"]
    group["0"] = np.zeros((kernel.shape[0] + 1, kernel.shape[1]), kernel.dtype)


BROKEN_MEMBERS = {
    "missing weights": (
        lambda members: members.pop("model.weights.h5"),
        ValueError,
        "model.weights",
    ),
    # Keras looks config.json up (KeyError); the bounded loader lists what
    # a .keras file must hold (ValueError).
    "missing config": (
        lambda members: members.pop("config.json"),
        (KeyError, ValueError),
        "config",
    ),
    "config not JSON": (
        lambda members: members.update({"config.json": b"{not json"}),
        ValueError,
        "Expecting property name",
    ),
    "weights not HDF5": (
        lambda members: members.update({"model.weights.h5": b"\x00" * 4096}),
        OSError,
        "file signature not found",
    ),
    "truncated weights": (
        lambda members: members.update(
            {"model.weights.h5": members["model.weights.h5"][:2000]}
        ),
        OSError,
        "truncated file",
    ),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("damage", sorted(BROKEN_MEMBERS))
def test_broken_member(good_file, tmp_path, damage, loader):
    edit, error, match = BROKEN_MEMBERS[damage]
    members = _members(good_file)
    edit(members)
    path = _write(tmp_path / "broken.keras", members)
    _load_fails(path, match, errors=error, loader=loader)


@pytest.mark.parametrize(
    "edit, match",
    [
        (_drop_variables, r"expected 4 variables, but received 0"),
        (
            _wrong_shape,
            r"must match. variable.shape=\(4, 2\), Received: value.shape=.*5, 2",
        ),
    ],
    ids=["missing variables", "wrong shape"],
)
def test_weights_that_do_not_fit_are_refused(good_file, tmp_path, edit, match):
    """No model comes back with some layers left at their initial weights."""
    path = _weights(good_file, tmp_path / "bad.keras", edit)
    _load_fails(path, match)


def test_the_good_file_loads(good_file):
    """The fixture the attacks start from is itself fine."""
    model = keras.models.load_model(good_file)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
    assert to_numpy(model(x)).shape == (2, 2)


# === Bombs: a few KB that declare gigabytes ===

GiB = 1 << 30
# What refusing a bomb may cost, in bytes read from the archive and in peak
# traced memory: far below the gigabytes the files declare.
REFUSAL_BUDGET = 64 << 20
_BLOCK = 1 << 24  # zeros per deflate block
_KERNEL = "layers/global_attention_pooling/vars/0"


@functools.cache
def _deflated_zeros():
    """16 MiB of zeros, deflated and fully flushed, so copies concatenate."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(bytes(_BLOCK)) + compressor.flush(zlib.Z_FULL_FLUSH)


def _raw_zip(path, members):
    """Writes a zip by hand, so that its headers can say anything.

    `members` holds (name, stored bytes, method, CRC, declared size) tuples.
    """
    body, directory = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        encoded = name.encode()
        # version, flags, method, time, date (1980-01-01), CRC, stored and
        # declared sizes, name and extra-field lengths
        fields = struct.pack(
            "<5H3I2H", 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded), 0
        )
        directory += b"PK\x01\x02" + struct.pack("<H", 20) + fields
        directory += struct.pack("<3H2I", 0, 0, 0, 0, len(body)) + encoded
        body += b"PK\x03\x04" + fields + encoded + data
    count = len(members)
    end = struct.pack(
        "<4s4H2IH", b"PK\x05\x06", 0, 0, count, count, len(directory), len(body), 0
    )
    path.write_bytes(bytes(body + directory + end))
    return path


def _stored(members):
    return [
        (name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))
        for name, data in members
    ]


def _zip_bomb(good, path, member, hidden, lie):
    """`good` whose `member` inflates to its content, then `hidden` zeros.

    The header declares the true size or, with `lie`, the content's alone,
    with the content's CRC: zipfile then returns the content, unharmed.
    """
    members = _members(good)
    content = members.pop(member)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = compressor.compress(content) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream += _deflated_zeros() * (hidden // _BLOCK)
    stream += zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the final block
    crc, size = zlib.crc32(content), len(content)
    if not lie:
        zeros = bytes(_BLOCK)
        for _ in range(hidden // _BLOCK):
            crc = zlib.crc32(zeros, crc)
        size += hidden
    bomb = (member, stream, zipfile.ZIP_DEFLATED, crc, size)
    return _raw_zip(path, [*_stored(members.items()), bomb])


def _declare(shape, where=_KERNEL):
    """An edit that puts a float32 dataset of `shape` at `where`, no data."""

    def edit(store):
        if where in store:
            del store[where]
        # Chunked, and no chunk written: the file stores nothing of it.
        store.create_dataset(
            where, shape=shape, dtype="f4", chunks=(256, 256), fillvalue=0
        )

    return edit


def _nbytes(good, name):
    """The bytes of dataset `name` in the good file, as h5py counts them."""
    with zipfile.ZipFile(good) as archive, archive.open("model.weights.h5") as f:
        with h5py.File(f, "r") as store:
            return store[name].nbytes


def _refused_within_budget(path, match, monkeypatch, **kwargs):
    """The bounded loader refuses `path`, naming it, having read and
    allocated little."""
    read = zipfile.ZipExtFile.read
    decompressed = []

    def counting_read(self, n=-1):
        data = read(self, n)
        decompressed.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    tracemalloc.start()
    try:
        _load_fails(
            path,
            f"{re.escape(str(path))}.*{match}",
            errors=ValueError,
            loader="bounded",
            **kwargs,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(decompressed) < REFUSAL_BUDGET, sum(decompressed)
    assert peak < REFUSAL_BUDGET, peak


@pytest.mark.parametrize("lie", [False, True], ids=["true size", "lying header"])
@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_zip_bomb_is_refused_before_it_is_read(
    good_file, tmp_path, monkeypatch, member, lie
):
    path = _zip_bomb(good_file, tmp_path / "bomb.keras", member, GiB, lie)
    assert path.stat().st_size < 2 << 20  # deflate inflates 1032-fold at most
    content = len(_members(good_file)[member])
    if lie:
        match = f"'{member}' expands beyond the {content} bytes"
    else:
        match = f"'{member}' declares {GiB + content} bytes"
    _refused_within_budget(path, match, monkeypatch)


SHAPE_BOMBS = {
    # 16 GiB: above Keras's own guard, which refuses datasets over 4 GiB
    # that store next to nothing.
    "16 GiB kernel": (_KERNEL, (1 << 20, 1 << 12)),
    # 2 GiB: below that guard; Keras would allocate it.
    "2 GiB kernel": (_KERNEL, (1 << 19, 1 << 10)),
    # At a path no variable has, which Keras never reads.
    "16 GiB extra dataset": ("layers/extra/vars/0", (1 << 20, 1 << 12)),
}


@pytest.mark.parametrize("bomb", sorted(SHAPE_BOMBS))
def test_shape_bomb_is_refused_before_it_is_allocated(
    good_file, tmp_path, monkeypatch, bomb
):
    where, shape = SHAPE_BOMBS[bomb]
    path = _weights(good_file, tmp_path / "bomb.keras", _declare(shape, where))
    assert path.stat().st_size < 64 << 10
    declared = int(np.prod(shape)) * 4
    if where == _KERNEL:
        allowed = _nbytes(good_file, _KERNEL)
    else:  # the largest variable: the Dense kernel
        allowed = _nbytes(good_file, "layers/dense/vars/0")
    match = f"dataset '{where}' .*{declared} bytes.* {allowed} bytes"
    _refused_within_budget(path, match, monkeypatch)


def _swap_in(where, make):
    """An edit that replaces dataset `where` with `make(group, name)`."""

    def edit(store):
        group_name, name = where.rsplit("/", 1)
        del store[where]
        make(store[group_name], name)

    return edit


H5_ATTACKS = {
    # Keras writes no links; a link may lead to data that nothing checked.
    "soft link": (
        _swap_in(_KERNEL, lambda g, n: g.__setitem__(n, h5py.SoftLink("/vars"))),
        "SoftLink at '" + _KERNEL,
    ),
    "link to another file": (
        _swap_in(
            _KERNEL, lambda g, n: g.__setitem__(n, h5py.ExternalLink("x.h5", "/"))
        ),
        "ExternalLink at '" + _KERNEL,
    ),
    "data in another file": (
        _swap_in(
            _KERNEL,
            lambda g, n: g.create_dataset(
                n, shape=(4, 2), dtype="f4", external=[("/dev/zero", 0, 32)]
            ),
        ),
        f"dataset '{_KERNEL}' stores its data outside",
    ),
    "strings": (
        _swap_in(
            _KERNEL,
            lambda g, n: g.create_dataset(
                n, data=["x" * 64], dtype=h5py.string_dtype()
            ),
        ),
        f"dataset '{_KERNEL}' has dtype object",
    ),
}


@pytest.mark.parametrize("attack", sorted(H5_ATTACKS))
def test_weights_file_structure_keras_never_writes_is_refused(
    good_file, tmp_path, monkeypatch, attack
):
    edit, match = H5_ATTACKS[attack]
    path = _weights(good_file, tmp_path / "bad.keras", edit)
    _refused_within_budget(path, re.escape(match), monkeypatch)


BAD_NAMES = {
    "absolute path": ("/tmp/evil.py", "must be a relative path"),
    "parent folder": ("../evil.py", "must be a relative path"),
    "parent folder in assets": ("assets/../../evil.py", "must be a relative path"),
    "backslashes": ("assets\\..\\..\\evil.py", "must be a relative path"),
    "unknown member": ("evil.py", "is not one Keras writes"),
    "second config": ("config.json", "appears twice"),
}


@pytest.mark.parametrize("attack", sorted(BAD_NAMES))
def test_member_names_keras_never_writes_are_refused(
    good_file, tmp_path, monkeypatch, attack
):
    name, problem = BAD_NAMES[attack]
    members = [*_members(good_file).items(), (name, b"import os")]
    path = _raw_zip(tmp_path / "bad.keras", _stored(members))
    _refused_within_budget(path, f"{re.escape(repr(name))} {problem}", monkeypatch)


PAID_BOMBS = {
    "shape bomb": lambda good, path, size: _weights(
        good, path, _declare((size // (1 << 12), 1 << 10))
    ),
    "zip bomb": lambda good, path, size: _zip_bomb(
        good, path, "config.json", size, lie=False
    ),
    "lying header": lambda good, path, size: _zip_bomb(
        good, path, "model.weights.h5", size, lie=True
    ),
}


@pytest.mark.parametrize("bomb", sorted(PAID_BOMBS))
def test_plain_keras_pays_for_what_the_bomb_declares(
    good_file, tmp_path, monkeypatch, bomb
):
    """The attacks are real: below Keras's own 4 GiB guards, plain
    `keras.models.load_model` allocates what the file declares, whether it
    then raises or returns a model. The bounded loader refuses the file."""
    size = 256 << 20
    path = PAID_BOMBS[bomb](good_file, tmp_path / "bomb.keras", size)
    tracemalloc.start()
    try:
        keras.models.load_model(path)
    except (ValueError, TypeError):  # the shape or the JSON turns out wrong
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak >= size, peak
    _refused_within_budget(path, "", monkeypatch)


# === Every builder's model loads with safe_mode=True ===


def _tiny_backbone():
    inputs = keras.Input(_SMALL)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="stage1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    return keras.Model(inputs, keras.layers.ReLU(name="stage2")(x), name="tiny")


# Every registered pooling, and the classifiers' baseline head.
POOLINGS = [*sorted(kgp.POOLINGS), "flatten"]

BUILDERS = {
    # CSRA gives the logits itself: no hidden layer can follow it.
    "build_classifier": lambda pooling: kgp.build_classifier(
        _tiny_backbone(),
        3,
        input_shape=_SMALL,
        pooling=pooling,
        hidden_units=() if pooling == "csra" else (4,),
    ),
    "build_feature_extractor": lambda pooling: kgp.build_feature_extractor(
        _tiny_backbone(), input_shape=_SMALL, pooling=pooling
    ),
    "build_multiscale_classifier": lambda pooling: kgp.build_multiscale_classifier(
        _tiny_backbone(),
        3,
        stages=["stage1", "stage2"],
        input_shape=_SMALL,
        pooling=pooling,
    ),
    "unfreeze_backbone": lambda pooling: _unfrozen(
        kgp.build_classifier(_tiny_backbone(), 3, input_shape=_SMALL, pooling=pooling)
    ),
}


def _unfrozen(model):
    kgp.unfreeze_backbone(model, num_layers=1)
    return model


def _check_safe_round_trip(model, path, x):
    model.save(path)
    expected = to_numpy(model(x))
    for kwargs in ({}, {"custom_objects": kgp.custom_objects()}):
        loaded = keras.models.load_model(path, safe_mode=True, **kwargs)
        np.testing.assert_allclose(to_numpy(loaded(x)), expected, rtol=1e-5, atol=1e-6)


def test_every_public_builder_is_covered():
    builders = {name for name in kgp.__all__ if name.startswith("build_")}
    assert builders <= set(BUILDERS), builders - set(BUILDERS)


@pytest.mark.parametrize(
    "builder, pooling",
    [
        (builder, pooling)
        for builder in sorted(BUILDERS)
        for pooling in POOLINGS
        # Flatten is the classifiers' baseline head, not an embedding; CSRA
        # gives class logits from one map, which only build_classifier takes.
        if not (builder == "build_feature_extractor" and pooling == "flatten")
        and not (
            builder.startswith("build_")
            and builder != "build_classifier"
            and pooling == "csra"
        )
    ],
)
def test_builder_models_load_with_safe_mode(tmp_path, builder, pooling):
    model = BUILDERS[builder](pooling)
    x = np.random.default_rng(0).uniform(0, 255, (2, *_SMALL)).astype("float32")
    _check_safe_round_trip(model, tmp_path / "model.keras", x)


# keras.applications families whose layers go beyond Conv/BN/Dense (custom
# layers, activations, rescaling), each by its smallest member.
APPLICATIONS = [
    ("ConvNeXtTiny", 32),  # LayerScale
    ("EfficientNetV2B0", 32),  # Rescaling, Normalization
    ("MobileNetV3Small", 32),  # hard-swish
    ("InceptionResNetV2", 75),  # CustomScaleLayer
]


@pytest.mark.parametrize("backbone, size", APPLICATIONS)
def test_application_backbones_load_with_safe_mode(tmp_path, backbone, size):
    if keras.backend.backend() != "tensorflow":
        # What safe_mode refuses is in the config, which no backend changes;
        # the builders' round trips above run on every backend.
        pytest.skip("large backbones: checked on TensorFlow only, to save CI time")
    model = kgp.build_classifier(
        backbone, 2, input_shape=(size, size, 3), weights=None, pooling="gem"
    )
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    _check_safe_round_trip(model, tmp_path / "model.keras", x)
