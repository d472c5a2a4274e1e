"""An exported SavedModel served from many threads at once.

`kgp.export_saved_model` writes a TF Serving SavedModel; here it is loaded
with plain TensorFlow and called from `THREADS` threads at once, each making
`ROUNDS` passes over the same batches in its own order. Every output must be
bit-identical to the single-threaded output for that batch, and the whole
load must finish within `DEADLINE_S`. TensorFlow only: SavedModel export
needs the TensorFlow backend (see the README, "Reliability").
"""

import concurrent.futures
import time

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="SavedModel export and tf.saved_model are TensorFlow-only",
)

THREADS = 16
ROUNDS = 8
BATCHES = 12  # of 1 to 4 images each: 16 * 8 * 12 = 1536 calls per model
DEADLINE_S = 180
SIZE = (32, 32, 3)


def _tiny_backbone():
    inputs = keras.Input(SIZE)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inputs, x)


def _trained_classifier(pooling):
    """A classifier after a few `fit` steps on random images.

    Its weights, BatchNorm statistics included, are ones training reaches:
    random weights can hold a negative moving variance, which gives NaN.
    """
    keras.utils.set_random_seed(0)
    model = kgp.build_classifier(
        _tiny_backbone(),
        5,
        input_shape=SIZE,
        pooling=pooling,
        freeze_backbone=False,
        freeze_batch_norm=False,
        preprocessing="tf",
    )
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (32, *SIZE)).astype("float32")
    model.fit(images, rng.integers(0, 5, 32), batch_size=8, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module", params=["attention", "mixed", "gem"])
def exported(request, tmp_path_factory):
    import tensorflow as tf

    model = _trained_classifier(request.param)
    path = kgp.export_saved_model(model, tmp_path_factory.mktemp("export"))
    return model, tf.saved_model.load(path).signatures["serving_default"]


def _batches():
    rng = np.random.default_rng(1)
    return [
        rng.uniform(0, 255, (int(rng.integers(1, 5)), *SIZE)).astype("float32")
        for _ in range(BATCHES)
    ]


def _call(serve, images):
    outputs = serve(images=images)
    return {name: value.numpy() for name, value in outputs.items()}


def test_many_threads_give_single_threaded_outputs(exported):
    model, served = exported
    batches = _batches()
    expected = [_call(served, images) for images in batches]
    for index, images in enumerate(batches):  # the model's own outputs
        probabilities = model.predict(images, verbose=0)
        assert np.isfinite(probabilities).all()
        np.testing.assert_allclose(
            expected[index]["probabilities"], probabilities, rtol=1e-5, atol=1e-7
        )
        np.testing.assert_array_equal(
            expected[index]["class_ids"], probabilities.argmax(axis=-1)
        )
    for index, images in enumerate(batches):  # deterministic to begin with
        for name, value in _call(served, images).items():
            np.testing.assert_array_equal(value, expected[index][name])

    deadline = time.monotonic() + DEADLINE_S

    def worker(seed):
        order = np.random.default_rng(seed).permutation(ROUNDS * BATCHES) % BATCHES
        results = []
        for index in order:
            if time.monotonic() > deadline:
                raise TimeoutError(f"thread {seed} passed the {DEADLINE_S} s deadline")
            results.append((int(index), _call(served, batches[index])))
        return results

    with concurrent.futures.ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(worker, seed) for seed in range(THREADS)]
        done, not_done = concurrent.futures.wait(futures, timeout=DEADLINE_S + 30)
    assert not not_done, f"{len(not_done)} threads still running"

    calls = 0
    for future in done:
        for index, outputs in future.result():  # re-raises a thread's error
            calls += 1
            assert outputs.keys() == expected[index].keys()
            for name, value in outputs.items():
                np.testing.assert_array_equal(value, expected[index][name])
    assert calls == THREADS * ROUNDS * BATCHES
    probabilities = np.concatenate([e["probabilities"] for e in expected])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
