"""`export --format` and `compare --export-format`: ONNX, LiteRT and OpenVINO.

The exports run here in their own runtimes, called directly (not through
`kgp.load_exported`), against Keras's `predict` of the loaded `.keras` file.
"""

import json
import os
import re
import types

import keras
import numpy as np
import onnx
import pytest
from test_cli_reliability import TINY, _error_line, _folders, _image_folder, _tiny_npz

import keras_globalpool as kgp
from keras_globalpool.cli import compare, export_formats
from keras_globalpool.cli.export_command import calibration_images
from keras_globalpool.cli.main import build_parser, main, settings_from

# The model's input: larger than the 8x8 calibration images, which are resized.
SHAPE = (12, 12, 1)
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = kgp.GlobalGeMPooling(name="pooler")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    path = tmp_path_factory.mktemp("model") / "m.keras"
    model.save(path)
    return path


def _images(count=5, shape=SHAPE):
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, (count, *shape)).astype("float32")


def _run_in_runtime(format, path, images):
    """The export's output on `images`, from its runtime's own API."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"]
        )
        return session.run(["probabilities"], {"images": images})[0]
    if format == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path)).get_signature_runner()
        return runner(images=images)["probabilities"]
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU")
    return compiled(images)[compiled.output("probabilities")]


@pytest.mark.parametrize("format", sorted(SUFFIXES))
def test_export_writes_a_file_that_predicts_as_keras(
    tmp_path, capsys, keras_file, format
):
    out = tmp_path / f"model{SUFFIXES[format]}"
    assert main(["export", str(keras_file), str(out), "--format", format]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert str(out) in line and line.endswith(" KB)")
    images = _images()
    model = keras.models.load_model(keras_file, safe_mode=True)
    np.testing.assert_allclose(
        _run_in_runtime(format, out, images),
        model.predict(images, verbose=0),
        atol=1e-5,
    )


def _op_types(path):
    return {node.op_type for node in onnx.load(path).graph.node}


@pytest.mark.parametrize("source", ["npz", "folder"])
def test_int8_is_calibrated_on_a_npz_or_a_folder(tmp_path, capsys, keras_file, source):
    if source == "npz":
        calibration = _tiny_npz(tmp_path / "calibration.npz")
    else:
        calibration = _image_folder(tmp_path / "calibration")
    out = tmp_path / "model.onnx"
    argv = ["export", str(keras_file), str(out), "--format", "onnx"]
    assert main([*argv, "--quantize", "int8", "--calibration", str(calibration)]) == 0
    # Activations too are quantized: QuantizeLinear nodes feed every op.
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(out)
    images = _images()
    model = keras.models.load_model(keras_file, safe_mode=True)
    quantized = _run_in_runtime("onnx", out, images)
    np.testing.assert_allclose(quantized.sum(axis=-1), 1, atol=1e-2)
    np.testing.assert_allclose(quantized, model.predict(images, verbose=0), atol=0.1)


def test_calibration_images_fit_the_model(tmp_path):
    folder = _image_folder(tmp_path / "gray")  # 8x8 grayscale PNGs
    rgb_model = keras.Sequential([keras.Input((12, 10, 3)), kgp.GlobalAveragePooling()])
    images = calibration_images(folder, rgb_model)
    assert images.shape == (8, 12, 10, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    rgb = _tiny_npz(tmp_path / "rgb.npz")
    with np.load(rgb) as arrays:
        x = np.repeat(arrays["x"][..., None], 3, axis=-1)
        np.savez(rgb, x=x, y=arrays["y"])
    gray_model = keras.Sequential([keras.Input((8, 8, 1)), kgp.GlobalAveragePooling()])
    with pytest.raises(ValueError, match="must be grayscale for this model"):
        calibration_images(rgb, gray_model)


# (argv after MODEL, error) for the refusals, which come before the model loads.
REFUSALS = {
    "int8 without calibration": (
        ["m.onnx", "--format", "onnx", "--quantize", "int8"],
        r"goes with, and only with, quantize='int8'.*calibration=None",
    ),
    "calibration without int8": (
        ["m.tflite", "--format", "litert", "--calibration", "{tmp}/c.npz"],
        r"goes with, and only with, quantize='int8'.*quantize=None",
    ),
    "dynamic with openvino": (
        ["m.xml", "--format", "openvino", "--quantize", "dynamic"],
        r"format='openvino' offers none. Received: quantize='dynamic'",
    ),
    "wrong suffix": (
        ["m.tflite", "--format", "onnx"],
        r"must be a \.onnx file for format='onnx', such as '{tmp}/m\.onnx'",
    ),
    "no suffix": (
        ["m", "--format", "litert"],
        r"such as '{tmp}/m\.tflite'. Received: out='{tmp}/m'",
    ),
    "version with onnx": (
        ["m.onnx", "--format", "onnx", "--version", "2"],
        r"`version` and `threshold` apply to format='tf_saved_model' only",
    ),
    "threshold with litert": (
        ["m.tflite", "--format", "litert", "--threshold", "0.3"],
        r"`version` and `threshold` apply to format='tf_saved_model' only",
    ),
    "a file name for a SavedModel": (["m.onnx"], r"pass format='onnx' \(--format\)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_export_options_are_refused_in_one_line(tmp_path, capsys, keras_file, case):
    argv, message = REFUSALS[case]
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    argv[0] = str(tmp_path / argv[0])
    assert main(["export", str(keras_file), *argv]) == 2
    line = _error_line(capsys.readouterr().err, command="export")
    assert re.search(message.format(tmp=re.escape(str(tmp_path))), line), line
    assert os.listdir(tmp_path) == []


def test_existing_out_is_kept_unless_overwrite(tmp_path, capsys, keras_file):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"my own model")
    argv = ["export", str(keras_file), str(out), "--format", "litert"]
    assert main(argv) == 2
    assert "--overwrite" in _error_line(capsys.readouterr().err, command="export")
    assert out.read_bytes() == b"my own model"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes()[4:8] == b"TFL3"  # a LiteRT flatbuffer


# === compare --export-format ===


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--quantize", "int8"], r"`quantize` \(--quantize\) needs an `export_format`"),
        (
            ["--export-format", "openvino", "--quantize", "dynamic"],
            r"'onnx' or 'litert'. Received: quantize='dynamic', "
            "export_format='openvino'",
        ),
        (["--export-format", "onnx", "--no-export"], r"\(--no-export\) skips"),
    ],
)
def test_compare_refuses_export_options_in_one_line(capsys, argv, message):
    assert main(["compare", *argv]) == 2
    assert re.search(message, _error_line(capsys.readouterr().err))


def test_compare_takes_tf_saved_model_as_the_export_it_already_does():
    args = build_parser().parse_args(["compare", "--export-format", "tf_saved_model"])
    assert not settings_from(args).deploys
    args = build_parser().parse_args(["compare", "--export-format", "litert"])
    assert settings_from(args).deploys


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    """A tiny run exported to ONNX, where the second head fails to export."""
    root = tmp_path_factory.mktemp("compare-onnx")
    original = export_formats.export

    def max_cannot_be_expressed(model, path, **kwargs):
        if path.parent.name == "max":
            raise ValueError("The onnx export of this model does not run as in Keras")
        return original(model, path, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_formats, "export", max_cannot_be_expressed)
        argv = ["compare", *TINY, "--heads", "avg,max", "--export-format", "onnx"]
        argv += ["--data", str(_tiny_npz(root / "d.npz")), *_folders(root)]
        code = main(argv)
    report = json.loads((root / "reports" / "run" / "report.json").read_text())
    return code, root, report


def test_compare_exports_each_head_and_measures_it(onnx_run):
    code, root, report = onnx_run
    assert code == 0 and report["status"] == "complete"
    avg = report["heads"][0]
    path = root / "models" / "run" / "avg" / "model.onnx"
    assert avg["exports"]["onnx"] == str(path)
    measured = avg["export_result"]
    assert measured["format"] == "onnx" and measured["quantize"] is None
    assert measured["size_bytes"] == path.stat().st_size > 0
    # A float32 export predicts each test image's class as Keras does.
    assert measured["agreement"] == 1.0
    assert measured["accuracy"] == measured["keras_accuracy"] == avg["accuracies"][0]
    assert measured["latency_ms"] > 0 and measured["keras_latency_ms"] > 0
    markdown = (root / "reports" / "run" / "report.md").read_text()
    assert "## Export\n" in markdown
    assert "| avg | onnx | none | " in markdown


def test_a_head_that_fails_to_export_is_reported_and_the_run_goes_on(onnx_run):
    _, root, report = onnx_run
    failed = report["heads"][1]
    assert failed["head"] == "max" and "onnx" not in failed["exports"]
    assert failed["export_result"]["error"].startswith("The onnx export of this")
    folder = root / "models" / "run" / "max"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "model.keras"]
    markdown = (root / "reports" / "run" / "report.md").read_text()
    assert "- max: not exported to onnx: The onnx export of this model" in markdown


def test_ctrl_c_in_the_export_leaves_no_half_exported_head(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        error = ValueError("The onnx export failed: ... REPLACED BY KeyboardInterrupt")
        error.__cause__ = KeyboardInterrupt()
        raise error

    monkeypatch.setattr(export_formats, "export", interrupted)
    settings = types.SimpleNamespace(
        saved_models=str(tmp_path), run_name="run", export_format="onnx", quantize=None
    )
    model = keras.Sequential([keras.Input((4, 4, 1)), kgp.GlobalAveragePooling()])

    def export_format(folder):
        return export_formats.export_and_measure(
            model, folder, settings, None, None, None
        )

    with pytest.raises(ValueError, match="REPLACED BY KeyboardInterrupt"):
        compare._export(model, settings, "avg", export_format)
    assert not (tmp_path / "run" / "avg").exists()
