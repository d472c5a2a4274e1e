"""Every Keras backend: the layer tests under jax and torch, and `.keras` files
saved under one backend loaded under the others.

KERAS_BACKEND must be set before Keras is imported, so the other backends run
in subprocesses started from the TensorFlow run (the README's plain
`python -m pytest`); under another backend these starters skip. The jax run
sets JAX_ENABLE_X64, without which jax has no float64.

The jax and torch runs start with the session's first test and are awaited
by its last ones (pytest-order), so they overlap the TensorFlow tests: most
of those keep one core busy, and the machine has two.
"""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
OTHER_BACKENDS = ("jax", "torch")
BACKENDS = ("tensorflow", *OTHER_BACKENDS)

# The modules run under every backend. test_saving's Sequential test converts
# outputs with np.asarray, which torch refuses; its fresh-process test runs.
LAYER_TESTS = (
    "tests/test_layers_basic.py",
    "tests/test_layers_correctness.py",
    "tests/test_properties.py",
    "tests/test_invariants.py",
    "tests/test_nan_policy.py",
    "tests/test_empty_inputs.py",
    "tests/test_layer_reliability.py",
    "tests/test_hostile_files.py",
    "tests/test_serving_load.py",
    "tests/test_backends.py",
    "tests/test_saving.py::test_fresh_process_load_gives_same_predictions",
)
# Fewer passes than this means tests were skipped or not collected.
MIN_PASSED = {"jax": 800, "torch": 800}
SUITE_TIMEOUT_S = 1500

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
    if "load" in steps:
        for path in sorted(folder.glob("*.keras")):
            name, saver, _ = path.name.split(".")
            if saver != me:
                m = keras.models.load_model(path, safe_mode=True)
                np.save(folder / f"{name}.{saver}.by.{me}.npy", numpy(m(inputs(name))))
    """
)


def _run_script(backend, folder, *steps):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder), *steps],
        env=_environment(backend),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{backend} {steps}:\n{done.stderr[-4000:]}"


@pytest.fixture(scope="session")
def cross_backend_predictions(tmp_path_factory, suite_runs):
    """Each backend saves three models; each loads the others' files.

    It asks for `suite_runs` only to start those first, in the background.
    """
    folder = tmp_path_factory.mktemp("backends")
    _run_script("tensorflow", folder, "save")
    _run_script("jax", folder, "save")
    _run_script("torch", folder, "save", "load")
    _run_script("jax", folder, "load")
    _run_script("tensorflow", folder, "load")
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


# === The layer tests under jax and torch ===


@pytest.fixture(scope="session")
def suite_runs(tmp_path_factory, other_backends_installed):
    """Starts the layer tests under jax and torch, side by side.

    Each run mostly keeps one core busy; they run beside each other and
    beside the rest of the TensorFlow session.
    """
    folder = tmp_path_factory.mktemp("suites")
    runs = {}
    for backend in OTHER_BACKENDS:
        log = open(folder / f"{backend}.log", "w+")  # noqa: SIM115 - closed below
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        process = subprocess.Popen(
            [*command, *LAYER_TESTS],
            cwd=ROOT,
            env=_environment(backend),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        runs[backend] = (process, log)
    yield runs
    for process, log in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


@started_from_tensorflow
@pytest.mark.order("last")
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_layer_tests_pass_under(suite_runs, backend):
    process, log = suite_runs[backend]
    try:
        returncode = process.wait(timeout=SUITE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    log.seek(0)
    output = log.read()
    assert returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    print(f"KERAS_BACKEND={backend}: {summary}")
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= MIN_PASSED[backend], summary
    assert " failed" not in summary and " error" not in summary, summary
