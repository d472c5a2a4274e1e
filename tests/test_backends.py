"""Every Keras backend: `.keras` files saved under one backend load and
predict the same under the others, and the package needs no TensorFlow
under jax or torch.

KERAS_BACKEND must be set before Keras is imported, so the other backends run
in subprocesses started from the TensorFlow run (the README's plain
`python -m pytest`); under another backend these starters skip. The jax run
sets JAX_ENABLE_X64, without which jax has no float64. The layer tests
themselves run under jax and torch as pytest sessions of their own, started
by `.ci/run` (see docs/reliability.md).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
OTHER_BACKENDS = ("jax", "torch")
BACKENDS = ("tensorflow", *OTHER_BACKENDS)

started_from_tensorflow = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the other backends are started from the TensorFlow run",
)


@pytest.fixture(scope="session")
def other_backends_installed():
    """In CI a missing backend fails; elsewhere it skips with the fix."""
    missing = [b for b in OTHER_BACKENDS if importlib.util.find_spec(b) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"{missing} not installed: pip install '.[test]'")


def _environment(backend):
    env = {**os.environ, "KERAS_BACKEND": backend}
    if backend == "jax":
        env["JAX_ENABLE_X64"] = "1"
    return env


def test_keras_runs_the_requested_backend():
    assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")


# === One .keras file, every backend ===

SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    import keras
    import numpy as np

    import keras_globalpool as kgp

    folder, *steps = sys.argv[1:]
    folder = Path(folder)
    me = keras.backend.backend()
    BACKENDS = ("tensorflow", "jax", "torch")


    def model():
        images = keras.Input((6, 5, 4), name="images")
        tokens = keras.Input((7,), dtype="int32", name="tokens")
        steps = keras.layers.Embedding(9, 4, mask_zero=True)(tokens)
        pooled = [
            kgp.GlobalAveragePooling()(images),
            kgp.GlobalMaxPooling(data_format="channels_first")(images),
            kgp.GlobalMixedPooling(mode="learned")(images),
            kgp.GlobalMixedPooling(mode="concat", keepdims=True)(images),
            kgp.GlobalAttentionPooling(reduction=2)(images),
            kgp.GlobalAttentionPooling(reduction=1, normalize="softmax")(steps),
            kgp.GlobalGeMPooling(p=2.5)(images),
            kgp.GlobalGeMPooling(p=4.0)(steps),
            kgp.GlobalAveragePooling()(steps),
        ]
        pooled = [keras.layers.Flatten()(p) for p in pooled]
        outputs = keras.layers.Dense(3)(keras.layers.Concatenate()(pooled))
        return keras.Model([images, tokens], outputs)


    def backbone():
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
        x = keras.layers.BatchNormalization()(x)
        return keras.Model(inputs, keras.layers.ReLU()(x))


    def inputs(name):
        rng = np.random.default_rng(0)
        if name == "layers":
            tokens = rng.integers(0, 9, (4, 7))
            tokens[1, 3:] = 0  # padding
            tokens[2] = 0  # a sequence that is all padding
            return [rng.normal(size=(4, 6, 5, 4)).astype("float32"), tokens]
        return rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")


    def numpy(outputs):
        return np.asarray(keras.ops.convert_to_numpy(outputs))


    if "save" in steps:
        built = {
            "layers": model(),
            "classifier": kgp.build_classifier(
                backbone(), 3, input_shape=(16, 16, 3), pooling="attention"
            ),
            "extractor": kgp.build_feature_extractor(
                backbone(), input_shape=(16, 16, 3), pooling="gem"
            ),
        }
        # Moved off their initial values by what training could do (GeM's p
        # stays near 2.5 and 4, never negative); the builders' BatchNorm
        # keeps its own.
        rng = np.random.default_rng(BACKENDS.index(me))
        built["layers"].set_weights(
            [
                w + rng.normal(scale=0.3, size=w.shape)
                for w in built["layers"].get_weights()
            ]
        )
        for name, m in built.items():
            m.save(folder / f"{name}.{me}.keras")
            np.save(folder / f"{name}.{me}.by.{me}.npy", numpy(m(inputs(name))))
        (folder / f"{me}.saved").touch()
    if "load" in steps:
        # The three backends run at once: load when the other two have saved.
        while not all((folder / f"{b}.saved").exists() for b in BACKENDS):
            time.sleep(0.2)
        for path in sorted(folder.glob("*.keras")):
            name, saver, _ = path.name.split(".")
            if saver != me:
                m = keras.models.load_model(path, safe_mode=True)
                np.save(folder / f"{name}.{saver}.by.{me}.npy", numpy(m(inputs(name))))
    """
)


def _run_at_once(folder, *steps):
    """Runs the script under every backend at once; fails with a failure's stderr."""
    running = {}
    for backend in BACKENDS:
        with open(folder / f"{backend}.stderr", "w") as stderr:
            running[backend] = subprocess.Popen(
                [sys.executable, "-c", SCRIPT, str(folder), *steps],
                env=_environment(backend),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
    deadline = time.monotonic() + 600
    stopped = set()
    # A backend that fails never writes its marker: stop the others waiting.
    while any(p.poll() is None for p in running.values()):
        if time.monotonic() > deadline or any(p.poll() for p in running.values()):
            for backend, process in running.items():
                if process.poll() is None:
                    process.kill()
                    stopped.add(backend)
        time.sleep(0.5)
    failures = [
        f"{backend} {steps}:\n{(folder / f'{backend}.stderr').read_text()[-4000:]}"
        for backend, process in running.items()
        if process.wait() != 0 and backend not in stopped
    ]
    assert not failures, "\n".join(failures)
    assert not stopped, f"{sorted(stopped)} still running after 600 s"


@pytest.fixture(scope="session")
def cross_backend_predictions(tmp_path_factory, other_backends_installed):
    """Each backend saves three models, then loads the others' files.

    One process per backend, all three started together: each loads once the
    other two have saved (five processes one after the other took 90 s).
    """
    folder = tmp_path_factory.mktemp("backends")
    _run_at_once(folder, "save", "load")
    return folder


@started_from_tensorflow
@pytest.mark.order("first")
@pytest.mark.parametrize("model", ["layers", "classifier", "extractor"])
@pytest.mark.parametrize("saver", BACKENDS)
def test_file_saved_under_one_backend_predicts_the_same_under_the_others(
    cross_backend_predictions, saver, model
):
    folder = cross_backend_predictions
    expected = np.load(folder / f"{model}.{saver}.by.{saver}.npy")
    assert np.all(np.isfinite(expected))
    for loader in BACKENDS:
        if loader != saver:
            got = np.load(folder / f"{model}.{saver}.by.{loader}.npy")
            np.testing.assert_allclose(
                got, expected, rtol=1e-5, atol=1e-5, err_msg=f"loaded by {loader}"
            )


IMPORT_ONLY = textwrap.dedent(
    """
    import sys

    import keras

    import keras_globalpool as kgp

    assert kgp.GlobalAveragePooling()(keras.ops.ones((1, 2, 3))).shape[-1] == 3
    print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")[:5])
    """
)


@started_from_tensorflow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_the_package_does_not_load_tensorflow_under(backend, other_backends_installed):
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ONLY],
        env=_environment(backend),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
