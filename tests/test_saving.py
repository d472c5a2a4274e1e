"""A model using every layer saves to .keras and loads in a fresh process."""

import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

LOADER = textwrap.dedent(
    """
    import sys
    import traceback

    import numpy as np
    import keras
    import keras_globalpool as kgp

    path, x_path, out_prefix = sys.argv[1:]
    x = np.load(x_path)
    # By the names that importing the package registers, then with
    # custom_objects; a failure of one is written for its test.
    for how, kwargs in [
        ("import", {}),
        ("custom_objects", {"custom_objects": kgp.custom_objects()}),
    ]:
        try:
            model = keras.models.load_model(path, safe_mode=True, **kwargs)
            np.save(out_prefix + how + ".npy", model.predict(x, verbose=0))
        except Exception:
            with open(out_prefix + how + ".error", "w") as error:
                error.write(traceback.format_exc())
    """
)


def _all_layers_model():
    inputs = keras.Input((None, None, 6))
    features = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    pooled = [
        kgp.GlobalAveragePooling(name="avg")(features),
        kgp.GlobalMaxPooling(name="max")(features),
        kgp.GlobalMixedPooling(mode="learned", name="mixed")(features),
        kgp.GlobalAttentionPooling(reduction=2, normalize="softmax", name="att")(
            features
        ),
        kgp.GlobalGeMPooling(p=2.5, name="gem")(features),
        kgp.GlobalLSEPooling(r=4.0, name="lse")(features),
        kgp.GlobalGatedAttentionPooling(units=4, name="gated")(features),
        kgp.GlobalGatedAttentionPooling(units=4, gated=False, name="ungated")(features),
        kgp.GlobalMultiHeadAttentionPooling(
            num_heads=2, latent_len=2, mlp_ratio=1.0, qk_norm=True, name="map"
        )(features),
        kgp.GlobalCovariancePooling(dim=4, iterations=3, name="cov")(features),
        kgp.GlobalSimPooling(
            num_heads=2, qkv_bias=True, qk_norm=True, gamma=2.0, name="simpool"
        )(features),
    ]
    outputs = keras.layers.Dense(3, activation="softmax")(
        keras.layers.Concatenate()(pooled)
    )
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def fresh_process_predictions(tmp_path_factory):
    """Keras's predictions of the trained model, and a fresh process's after
    loading its file each way (one process loads both ways)."""
    folder = tmp_path_factory.mktemp("fresh_process")
    model = _all_layers_model()
    x = np.random.default_rng(0).uniform(0, 1, (4, 10, 10, 6)).astype("float32")
    y = np.array([0, 1, 2, 0])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)  # move the weights off their initial values
    path = folder / "model.keras"
    model.save(path)
    np.save(folder / "x.npy", x)
    out_prefix = str(folder / "out.")
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(path), str(folder / "x.npy"), out_prefix],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return model.predict(x, verbose=0), out_prefix


@pytest.mark.parametrize("how", ["import", "custom_objects"])
def test_fresh_process_load_gives_same_predictions(fresh_process_predictions, how):
    expected, out_prefix = fresh_process_predictions
    error = Path(f"{out_prefix}{how}.error")
    assert not error.exists(), error.read_text()
    np.testing.assert_allclose(np.load(f"{out_prefix}{how}.npy"), expected, rtol=1e-6)


def test_sequential_round_trip(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((12, 5)),
            kgp.GlobalGeMPooling(),
            keras.layers.Dense(2),
        ]
    )
    model.get_layer(index=0).p_weight.assign(4.0)
    path = tmp_path / "seq.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert float(loaded.layers[0].p_weight.numpy()) == 4.0
    x = np.random.default_rng(1).uniform(size=(3, 12, 5)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_files_saved_before_the_layers_moved_still_load(tmp_path):
    """FrozenBatchNormalization and BackbonePreprocessing moved from
    `keras_globalpool.builders` to `keras_globalpool.layers` after 0.1.0; files that
    name the old modules load by their registered names."""
    import zipfile

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    model = kgp.build_classifier(keras.Model(inputs, x), 3, input_shape=(8, 8, 3))
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = members["config.json"].decode()
    for name in ("frozen_batch_norm", "preprocessing"):
        assert f"keras_globalpool.layers.{name}" in config
        config = config.replace(
            f"keras_globalpool.layers.{name}", f"keras_globalpool.builders.{name}"
        )
    members["config.json"] = config.encode()
    with zipfile.ZipFile(tmp_path / "old.keras", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    for load in (keras.models.load_model, kgp.load_model):
        loaded = load(tmp_path / "old.keras")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected)
