"""The serving signature: every model output, and decisions read from the head.

The classifiers here pool an identity backbone, so `predictions` sees each
image's channel means: constant images whose channels are chosen logits give
known probabilities (0.99, 0.01, ...). Every served value is checked against
NumPy applied to `model.predict`.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_globalpool as kgp
from keras_globalpool.cli.export_command import export_keras_file
from keras_globalpool.cli.main import main

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="SavedModel export and tf.saved_model are TensorFlow-only",
)

SIZE = (4, 4, 3)
# Probabilities on both sides of 0.5 and of 0.7, none at either.
PROBABILITIES = np.array(
    [[0.99, 0.01, 0.6], [0.01, 0.4, 0.99], [0.6, 0.8, 0.01], [0.4, 0.99, 0.8]]
)


def _logit(p):
    return np.log(p / (1 - p))


def _constant_images(channels):
    """One constant image per row of `channels`: its pooled features."""
    return np.broadcast_to(channels[:, None, None, :], (len(channels), *SIZE)).astype(
        "float32"
    )


def _known_classifier(num_classes, activation):
    """A `build_classifier` model whose `predictions` sees the channel means."""
    inputs = keras.Input(SIZE)
    backbone = keras.Model(inputs, keras.layers.Identity()(inputs))
    model = kgp.build_classifier(
        backbone,
        num_classes,
        input_shape=SIZE,
        activation=activation,
        preprocessing="none",
    )
    kernel = np.eye(3, num_classes, dtype="float32")
    model.get_layer("predictions").set_weights([kernel, np.zeros(num_classes)])
    return model


def _load(path):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda images: {
        key: value.numpy() for key, value in serve(images=images).items()
    }


def _serve(model, tmp_path, **kwargs):
    return _load(kgp.export_saved_model(model, tmp_path / "export", **kwargs))


class TestClassDecisions:
    @pytest.mark.parametrize("threshold", [0.5, 0.7])
    def test_single_sigmoid_column_thresholds(self, tmp_path, threshold):
        model = _known_classifier(1, "sigmoid")
        images = _constant_images(_logit(PROBABILITIES))
        expected = model.predict(images, verbose=0)
        np.testing.assert_allclose(expected[:, 0], PROBABILITIES[:, 0], rtol=1e-5)
        outputs = _serve(model, tmp_path, threshold=threshold)(images)
        assert set(outputs) == {"probabilities", "class_ids"}
        np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-6)
        assert outputs["class_ids"].dtype == np.int64
        np.testing.assert_array_equal(
            outputs["class_ids"], (expected[:, 0] >= threshold).astype(np.int64)
        )

    @pytest.mark.parametrize("threshold", [0.5, 0.7])
    def test_multi_label_sigmoid_gives_per_label_decisions(self, tmp_path, threshold):
        model = _known_classifier(3, "sigmoid")
        images = _constant_images(_logit(PROBABILITIES))
        expected = model.predict(images, verbose=0)
        np.testing.assert_allclose(expected, PROBABILITIES, rtol=1e-5)
        outputs = _serve(model, tmp_path, threshold=threshold)(images)
        assert set(outputs) == {"probabilities", "labels"}
        assert outputs["labels"].dtype == np.int64
        np.testing.assert_array_equal(
            outputs["labels"], (expected >= threshold).astype(np.int64)
        )

    def test_softmax_gives_the_argmax(self, tmp_path):
        model = _known_classifier(3, "softmax")
        images = _constant_images(_logit(PROBABILITIES))
        expected = model.predict(images, verbose=0)
        outputs = _serve(model, tmp_path, threshold=0.9)(images)
        assert set(outputs) == {"probabilities", "class_ids"}
        np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-6)
        np.testing.assert_array_equal(outputs["class_ids"], expected.argmax(axis=-1))

    @pytest.mark.parametrize("threshold", [0.5, 0.7])
    def test_single_logit_compares_with_the_threshold_logit(self, tmp_path, threshold):
        model = _known_classifier(1, None)
        images = _constant_images(_logit(PROBABILITIES))
        expected = model.predict(images, verbose=0)
        outputs = _serve(model, tmp_path, threshold=threshold)(images)
        assert set(outputs) == {"logits", "class_ids"}
        np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-6)
        probabilities = 1 / (1 + np.exp(-expected[:, 0].astype(np.float64)))
        np.testing.assert_array_equal(
            outputs["class_ids"], (probabilities >= threshold).astype(np.int64)
        )

    def test_several_logits_give_the_argmax(self, tmp_path):
        model = _known_classifier(3, None)
        images = _constant_images(_logit(PROBABILITIES))
        expected = model.predict(images, verbose=0)
        outputs = _serve(model, tmp_path)(images)
        assert set(outputs) == {"logits", "class_ids"}
        np.testing.assert_array_equal(outputs["class_ids"], expected.argmax(axis=-1))

    def test_a_nested_classifier_is_read_through(self, tmp_path):
        classifier = _known_classifier(1, "sigmoid")
        images = keras.Input(SIZE)
        model = keras.Model(images, classifier(images))
        images = _constant_images(_logit(PROBABILITIES))
        expected = model.predict(images, verbose=0)[:, 0]
        outputs = _serve(model, tmp_path)(images)
        assert set(outputs) == {"probabilities", "class_ids"}
        np.testing.assert_array_equal(
            outputs["class_ids"], (expected >= 0.5).astype(np.int64)
        )

    def test_unknown_head_exports_only_its_output(self, tmp_path):
        inputs = keras.Input(SIZE)
        outputs = keras.layers.Dense(2, activation="relu")(
            kgp.GlobalAveragePooling()(inputs)
        )
        model = keras.Model(inputs, outputs)
        images = _constant_images(_logit(PROBABILITIES))
        served = _serve(model, tmp_path)(images)
        assert set(served) == {"outputs"}
        np.testing.assert_allclose(
            served["outputs"], model.predict(images, verbose=0), rtol=1e-6
        )

    @pytest.mark.parametrize(
        "threshold", [0, 1, -0.1, 1.5, float("nan"), float("inf"), "0.5", True, None]
    )
    def test_bad_threshold(self, tmp_path, threshold):
        with pytest.raises(ValueError, match="Received: threshold="):
            kgp.export_saved_model(
                _known_classifier(1, "sigmoid"), tmp_path, threshold=threshold
            )


def _attention_model(output_structure):
    """The README's attention model, its outputs in `output_structure`."""
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    pooled, scores = kgp.GlobalAttentionPooling(name="pooler")(
        features, return_attention_scores=True
    )
    classes = keras.layers.Dense(3, activation="softmax", name="classes")(pooled)
    return keras.Model(inputs, output_structure(classes, scores, pooled))


class TestSeveralOutputs:
    images = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype("float32")

    def test_list_outputs_are_named_after_their_layers(self, tmp_path):
        model = _attention_model(lambda classes, scores, pooled: [classes, scores])
        expected = model.predict(self.images, verbose=0)
        outputs = _serve(model, tmp_path)(self.images)
        assert set(outputs) == {"classes", "classes_class_ids", "pooler"}
        np.testing.assert_allclose(outputs["classes"], expected[0], rtol=1e-5)
        np.testing.assert_allclose(outputs["pooler"], expected[1], rtol=1e-5)
        np.testing.assert_array_equal(
            outputs["classes_class_ids"], expected[0].argmax(axis=-1)
        )

    def test_dict_outputs_keep_their_keys(self, tmp_path):
        model = _attention_model(
            lambda classes, scores, pooled: {"species": classes, "where": scores}
        )
        expected = model.predict(self.images, verbose=0)
        outputs = _serve(model, tmp_path)(self.images)
        assert set(outputs) == {"species", "species_class_ids", "where"}
        np.testing.assert_allclose(outputs["species"], expected["species"], rtol=1e-5)
        np.testing.assert_allclose(outputs["where"], expected["where"], rtol=1e-5)

    def test_names_are_made_unique(self, tmp_path):
        model = _attention_model(lambda classes, scores, pooled: [pooled, scores])
        expected = model.predict(self.images, verbose=0)
        outputs = _serve(model, tmp_path)(self.images)
        assert set(outputs) == {"pooler", "pooler_1"}
        np.testing.assert_allclose(outputs["pooler"], expected[0], rtol=1e-5)
        np.testing.assert_allclose(outputs["pooler_1"], expected[1], rtol=1e-5)

    def test_decisions_only_for_classifier_outputs(self, tmp_path):
        inputs = keras.Input(SIZE)
        pooled = kgp.GlobalAveragePooling()(inputs)
        tags = keras.layers.Dense(3, activation="sigmoid", name="tags")(pooled)
        box = keras.layers.Dense(4, name="box")(pooled)  # a regression
        model = keras.Model(inputs, [tags, box])
        model.get_layer("tags").set_weights([np.eye(3), np.zeros(3)])
        images = _constant_images(_logit(PROBABILITIES))
        expected = model.predict(images, verbose=0)
        np.testing.assert_allclose(expected[0], PROBABILITIES, rtol=1e-5)
        outputs = _serve(model, tmp_path, threshold=0.7)(images)
        assert set(outputs) == {"tags", "tags_labels", "box"}
        np.testing.assert_allclose(outputs["box"], expected[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(
            outputs["tags_labels"], (expected[0] >= 0.7).astype(np.int64)
        )


@pytest.mark.parametrize("through", ["function", "command line"])
def test_export_command_passes_the_threshold(tmp_path, through):
    model = _known_classifier(1, "sigmoid")
    model.save(tmp_path / "model.keras")
    if through == "function":
        path = export_keras_file(
            tmp_path / "model.keras", tmp_path / "out", threshold=0.7
        )
    else:
        argv = ["export", str(tmp_path / "model.keras"), str(tmp_path / "out")]
        assert main([*argv, "--threshold", "0.7"]) == 0
        path = tmp_path / "out" / "1"
    images = _constant_images(_logit(PROBABILITIES))
    expected = model.predict(images, verbose=0)[:, 0]
    np.testing.assert_array_equal(
        _load(str(path))(images)["class_ids"], (expected >= 0.7).astype(np.int64)
    )


@pytest.mark.parametrize("threshold", ["1.5", "0", "nan"])
def test_export_command_refuses_a_bad_threshold_in_one_line(
    tmp_path, capsys, threshold
):
    _known_classifier(1, "sigmoid").save(tmp_path / "model.keras")
    argv = ["export", str(tmp_path / "model.keras"), str(tmp_path / "out")]
    assert main([*argv, "--threshold", threshold]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("keras-globalpool export: error: ")
    assert "threshold" in err
    assert not (tmp_path / "out").exists()


def test_several_inputs_are_refused(tmp_path):
    first, second = keras.Input((4,), name="first"), keras.Input((4,), name="second")
    merged = keras.layers.Concatenate()([first, second])
    model = keras.Model([first, second], keras.layers.Dense(2)(merged))
    with pytest.raises(ValueError, match="one input.*Received: .*2 inputs"):
        kgp.export_saved_model(model, tmp_path)
    assert os.listdir(tmp_path) == []


def test_sequential_model_never_called_exports(tmp_path):
    model = keras.Sequential(
        [keras.Input((4, 4, 3)), kgp.GlobalGeMPooling(), keras.layers.Dense(2)]
    )
    import tensorflow as tf

    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    path = kgp.export_saved_model(model, tmp_path / "sequential")
    served = tf.saved_model.load(path).signatures["serving_default"](images=x)
    np.testing.assert_allclose(served["logits"], model.predict(x), rtol=1e-6)


def test_unbuilt_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Received: model="):
        kgp.export_saved_model(keras.Sequential([keras.layers.Dense(2)]), tmp_path)


IMPORT_WITHOUT_TF = textwrap.dedent(
    """
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("export_under_test", sys.argv[1])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    loaded = sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow")
    print(loaded[:5])
    sys.exit(1 if loaded else 0)
    """
)


def test_importing_export_does_not_load_tensorflow():
    # Under another backend the module must not pull TensorFlow in; it is
    # loaded from its file so the rest of the package plays no part.
    spec = importlib.util.find_spec("keras_globalpool.serving")
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_WITHOUT_TF, spec.origin],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
