"""`keras_globalpool.safe_loading.load_model` on good files and on its bounds.

Good files, every pooling in the registry, a MobileNetV2 classifier and a
trained model with its optimizer state, load and predict as the model that
was saved and as plain `keras.models.load_model` loads them. The bound grows
with the model, `max_bytes` replaces it, and each refusal names what it
refused. The attacks themselves are in `test_hostile_files.py`.
"""

import io
import json
import re
import zipfile

import h5py
import keras
import numpy as np
import pytest
from layer_cases import make_pooling, to_numpy

import keras_globalpool as kgp
from keras_globalpool.safe_loading import load_model

MiB = 1 << 20


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (2, *shape)).astype("float32")


def _pooling_model(pooling):
    inputs = keras.Input((6, 6, 4))
    pooled = make_pooling(pooling, name="pooler")(inputs)
    flat = keras.layers.Flatten()(pooled)
    model = keras.Model(inputs, keras.layers.Dense(2, name="predictions")(flat))
    # Off their initial values, each weight keeping its sign (GeM's p > 0).
    rng = np.random.default_rng(1)
    model.set_weights(
        [w * rng.uniform(0.8, 1.25, w.shape) for w in model.get_weights()]
    )
    return model


def _check_loads_as_saved(model, path, x, max_bytes=None, **kwargs):
    """The bounded loader's model predicts as the saved one and as Keras's."""
    loaded = load_model(path, max_bytes=max_bytes, **kwargs)
    expected = to_numpy(model(x))
    np.testing.assert_allclose(to_numpy(loaded(x)), expected, rtol=1e-6, atol=1e-6)
    by_keras = keras.models.load_model(path, **kwargs)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(by_keras(x)))
    return loaded


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _write(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# === Good files load ===


@pytest.mark.parametrize("pooling", sorted(kgp.POOLINGS))
def test_every_pooling_loads_and_predicts_the_same(tmp_path, pooling):
    model = _pooling_model(pooling)
    model.save(tmp_path / "model.keras")
    _check_loads_as_saved(model, tmp_path / "model.keras", _inputs((6, 6, 4)))


def test_mobilenet_classifier_loads_and_predicts_the_same(tmp_path):
    model = kgp.build_classifier(
        "MobileNetV2", 3, input_shape=(32, 32, 3), weights=None
    )
    model.save(tmp_path / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    _check_loads_as_saved(model, tmp_path / "model.keras", x)


@pytest.mark.parametrize("compile", [True, False])
def test_a_trained_model_loads_with_its_optimizer_state(tmp_path, compile):
    """The file holds Adam's moments; they fit, compiled or not."""
    model = _pooling_model("attention")
    model.compile(optimizer="adam", loss="mse")
    x = _inputs((6, 6, 4))
    model.fit(x, np.ones((2, 2)), batch_size=1, epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = _check_loads_as_saved(model, tmp_path / "model.keras", x, compile=compile)
    if compile:
        saved = [to_numpy(v) for v in model.optimizer.variables]
        assert to_numpy(loaded.optimizer.iterations) == 4
        for got, expected in zip(loaded.optimizer.variables, saved, strict=True):
            np.testing.assert_array_equal(to_numpy(got), expected)
    else:
        assert not loaded.compiled


def test_the_bound_grows_with_the_model(tmp_path):
    """A 32 MiB kernel is twice the fixed allowance: the model pays for it."""
    inputs = keras.Input((2048,))
    model = keras.Model(inputs, keras.layers.Dense(4096)(inputs))
    model.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        assert archive.getinfo("model.weights.h5").file_size > 32 * MiB
    _check_loads_as_saved(model, tmp_path / "model.keras", _inputs((2048,)))


def test_a_deflated_file_loads(tmp_path):
    """Keras stores members; a file zipped again with deflate is fine too."""
    model = _pooling_model("gem")
    model.save(tmp_path / "model.keras")
    members = _members(tmp_path / "model.keras")
    path = _write(tmp_path / "deflated.keras", members, zipfile.ZIP_DEFLATED)
    _check_loads_as_saved(model, path, _inputs((6, 6, 4)))


def test_assets_are_allowed(tmp_path):
    model = _pooling_model("mixed")
    model.save(tmp_path / "model.keras")
    members = {**_members(tmp_path / "model.keras"), "assets/notes.txt": b"notes"}
    path = _write(tmp_path / "assets.keras", members)
    _check_loads_as_saved(model, path, _inputs((6, 6, 4)))


class _Doubling(keras.layers.Layer):
    """A user's layer that no registry knows."""

    def call(self, x):
        return 2.0 * x


def test_custom_objects_reach_keras(tmp_path):
    inputs = keras.Input((6, 6, 4))
    pooled = kgp.GlobalGeMPooling()(_Doubling()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    model.save(tmp_path / "model.keras")
    with pytest.raises(TypeError, match="Could not locate class '_Doubling'"):
        load_model(tmp_path / "model.keras")
    _check_loads_as_saved(
        model,
        tmp_path / "model.keras",
        _inputs((6, 6, 4)),
        custom_objects={"_Doubling": _Doubling},
    )


# === The bounds ===


@pytest.fixture
def small_file(tmp_path):
    model = _pooling_model("attention")
    model.save(tmp_path / "model.keras")
    return model, tmp_path / "model.keras"


def test_the_bound_follows_the_documented_formula(small_file, tmp_path):
    """6 times the variable bytes, plus 4 KiB a variable and 16 MiB."""
    model, path = small_file
    variables = model.weights
    variable_bytes = sum(to_numpy(v).nbytes for v in variables)
    bound = 6 * (variable_bytes + 4096 * len(variables)) + 16 * MiB
    members = _members(path)
    # HDF5 reads past junk at the end of its file.
    members["model.weights.h5"] += bytes(bound + 1 - len(members["model.weights.h5"]))
    padded = _write(tmp_path / "padded.keras", members)
    refusal = f"declares {bound + 1} bytes, more than the {bound} bytes allowed"
    with pytest.raises(ValueError, match=refusal):
        load_model(padded)
    _check_loads_as_saved(model, padded, _inputs((6, 6, 4)), max_bytes=bound + 2 * MiB)


def test_max_bytes_bounds_each_member_and_their_total(small_file):
    model, path = small_file
    with zipfile.ZipFile(path) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    total = sum(sizes.values())
    _check_loads_as_saved(model, path, _inputs((6, 6, 4)), max_bytes=total)
    refusal = f"{total} bytes in all, more than the {total - 1} bytes allowed by"
    with pytest.raises(ValueError, match=f"{refusal} `max_bytes`"):
        load_model(path, max_bytes=total - 1)
    weights = sizes["model.weights.h5"]
    refusal = (
        f"'model.weights.h5' declares {weights} bytes, more than the {weights - 1}"
    )
    with pytest.raises(ValueError, match=f"{refusal} bytes allowed by `max_bytes`"):
        load_model(path, max_bytes=weights - 1)


def _gzipped(h5_bytes):
    """The HDF5 file again, every array dataset gzip-compressed."""
    out = io.BytesIO()
    with h5py.File(io.BytesIO(h5_bytes), "r") as source, h5py.File(out, "w") as target:

        def copy(name, item):
            if isinstance(item, h5py.Group):
                target.require_group(name).attrs.update(item.attrs)
            else:
                compression = "gzip" if item.ndim else None
                target.create_dataset(name, data=item[()], compression=compression)

        target.attrs.update(source.attrs)
        source.visititems(copy)
    return out.getvalue()


def test_max_bytes_bounds_what_the_datasets_declare(tmp_path):
    """A compressed 32 MiB kernel of zeros stores a few KB, and declares
    32 MiB: it fits its variable, and not a `max_bytes` of 1 MiB."""
    inputs = keras.Input((2048,))
    dense = keras.layers.Dense(
        4096, kernel_initializer="zeros", bias_initializer="ones"
    )
    model = keras.Model(inputs, dense(inputs))
    model.save(tmp_path / "model.keras")
    members = _members(tmp_path / "model.keras")
    members["model.weights.h5"] = _gzipped(members["model.weights.h5"])
    path = _write(tmp_path / "small.keras", members)
    assert path.stat().st_size < MiB
    _check_loads_as_saved(model, path, _inputs((2048,)))
    declared = sum(to_numpy(w).nbytes for w in model.weights)
    refusal = f"declare {declared} bytes in all, more than the {MiB} bytes allowed by"
    with pytest.raises(ValueError, match=f"model.weights.h5 {refusal} `max_bytes`"):
        load_model(path, max_bytes=MiB)


def test_a_member_may_not_inflate_more_than_a_hundredfold(small_file, tmp_path):
    """JSON may end in blanks; 4 MiB of them deflate a thousandfold."""
    model, path = small_file
    members = _members(path)
    members["config.json"] += b" " * (4 * MiB)
    deflated = _write(tmp_path / "deflated.keras", members, zipfile.ZIP_DEFLATED)
    refusal = "'config.json' declares .* stored, more than the 100-fold expansion"
    with pytest.raises(ValueError, match=refusal):
        load_model(deflated)
    stored = _write(tmp_path / "stored.keras", members)
    _check_loads_as_saved(model, stored, _inputs((6, 6, 4)))


# === Arguments ===


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True, "1"])
def test_bad_max_bytes_is_named(small_file, max_bytes):
    with pytest.raises(ValueError, match=f"Received: max_bytes={max_bytes!r}"):
        load_model(small_file[1], max_bytes=max_bytes)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("model.h5", "must name a `.keras` file"),
        ("missing.keras", "must be an existing `.keras` zip file"),
        ("folder.keras", "must be an existing `.keras` zip file"),
    ],
)
def test_bad_filepath_is_named(tmp_path, name, problem):
    (tmp_path / "folder.keras").mkdir()
    path = tmp_path / name
    received = re.escape(f"Received: filepath='{path}'")
    with pytest.raises(ValueError, match=f"{problem}. {received}"):
        load_model(path)


def test_a_config_that_is_not_a_model_is_refused(small_file, tmp_path):
    members = _members(small_file[1])
    layer = keras.layers.Dense(2)
    members["config.json"] = json.dumps(keras.saving.serialize_keras_object(layer))
    path = _write(tmp_path / "layer.keras", members)
    refusal = "must describe a `keras.Model`. Received: class_name='Dense'"
    with pytest.raises(ValueError, match=refusal):
        load_model(path)
