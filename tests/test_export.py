"""TF Serving export: layout, signature, no forced XLA, plain-TensorFlow loading."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2

import keras_globalpool as kgp

RNG = np.random.default_rng(0)


def _tiny_classifier():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    backbone = keras.Model(inputs, keras.layers.ReLU()(x))
    return kgp.build_classifier(
        backbone, 3, input_shape=(16, 16, 3), preprocessing="tf"
    )


def _must_compile_functions(version_path):
    """Names of the functions in the SavedModel marked `_XlaMustCompile`."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return [
        function.signature.name
        for graph in saved_model.meta_graphs
        for function in graph.graph_def.library.function
        if "_XlaMustCompile" in function.attr and function.attr["_XlaMustCompile"].b
    ]


@pytest.fixture(scope="module")
def exported_classifier(tmp_path_factory):
    """A MobileNetV2 + GeM classifier, some raw images and its export."""
    model = kgp.build_classifier(
        "MobileNetV2", 4, input_shape=(32, 32, 3), pooling="gem", weights=None
    )
    x = RNG.uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    export_dir = tmp_path_factory.mktemp("serving") / "classifier"
    path = kgp.export_saved_model(model, export_dir)
    return model, x, path


def test_tf_serving_layout_and_versions(tmp_path):
    model = _tiny_classifier()
    export_dir = tmp_path / "tiny"
    first = kgp.export_saved_model(model, export_dir)
    assert first == str(export_dir / "1")
    assert os.path.isfile(os.path.join(first, "saved_model.pb"))
    assert os.path.isdir(os.path.join(first, "variables"))
    assert kgp.export_saved_model(model, export_dir, version=7) == str(export_dir / "7")
    assert kgp.export_saved_model(model, export_dir) == str(export_dir / "8")
    assert sorted(os.listdir(export_dir)) == ["1", "7", "8"]  # no staging left
    with pytest.raises(FileExistsError, match="Version 7 already exists"):
        kgp.export_saved_model(model, export_dir, version=7)


@pytest.mark.parametrize("version", [-1, 1.5, "2", True])
def test_bad_version(tmp_path, version):
    with pytest.raises(ValueError, match="Received: version="):
        kgp.export_saved_model(_tiny_classifier(), tmp_path, version=version)


def test_default_export_is_not_xla_must_compile(exported_classifier, tmp_path):
    _, _, path = exported_classifier
    assert _must_compile_functions(path) == []
    jit_path = kgp.export_saved_model(_tiny_classifier(), tmp_path, jit_compile=True)
    assert _must_compile_functions(jit_path) != []


def test_convnext_export_is_not_xla_must_compile(tmp_path):
    # Keras compiles grouped convolutions with XLA on TensorFlow; the builders
    # replace ConvNeXt's with depthwise convolutions.
    model = kgp.build_classifier(
        "ConvNeXtTiny", 3, input_shape=(32, 32, 3), weights=None
    )
    assert _must_compile_functions(kgp.export_saved_model(model, tmp_path)) == []


PLAIN_TF_LOADER = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys


    class Blocker(importlib.abc.MetaPathFinder):
        # TF Serving has none of our Python: make sure nothing needs it.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "keras_globalpool":
                raise ImportError(f"blocked: {name}")


    sys.meta_path.insert(0, Blocker())
    import numpy as np
    import tensorflow as tf

    try:
        import keras_globalpool  # noqa: F401
        sys.exit("keras_globalpool should not be importable")
    except ImportError:
        pass
    path, x_path = sys.argv[1:]
    serve = tf.saved_model.load(path).signatures["serving_default"]
    outputs = serve(images=tf.constant(np.load(x_path)))
    print(json.dumps({key: value.numpy().tolist() for key, value in outputs.items()}))
    """
)


def test_plain_tensorflow_runs_the_export(exported_classifier, tmp_path):
    model, x, path = exported_classifier
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_TF_LOADER, path, str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(outputs) == {"probabilities", "class_ids"}
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(outputs["class_ids"], expected.argmax(axis=-1))


def test_saved_model_cli_lists_the_signature(exported_classifier):
    _, _, path = exported_classifier
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    done = subprocess.run(
        [cli, "show", "--dir", path, "--all"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shown = done.stdout
    assert "signature_def['serving_default']" in shown
    for expected in (
        "inputs['images'] tensor_info",
        "shape: (-1, 32, 32, 3)",
        "outputs['probabilities'] tensor_info",
        "outputs['class_ids'] tensor_info",
        "dtype: DT_INT64",
    ):
        assert expected in shown, shown
