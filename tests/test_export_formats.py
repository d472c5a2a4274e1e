"""`kgp.export` to ONNX, LiteRT and OpenVINO, each run in its own runtime.

Every check runs the written file with the runtime's own API
(`onnxruntime.InferenceSession`, LiteRT's `Interpreter`, `openvino.Core`),
not through `kgp.load_exported`, so a bug that the export and its loader
share cannot hide; the loader is compared with them once. The reference is
Keras's `predict`.

Run with `-s` to print the matrix of which pooling exports to which format
(docs/deployment.md shows it).
"""

import os
import re

import keras
import numpy as np
import pytest
from layer_cases import token_ids, token_model

import keras_globalpool as kgp

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="`kgp.export` converts TensorFlow graphs: TensorFlow backend only",
)
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
openvino = pytest.importorskip("openvino")
litert = pytest.importorskip("ai_edge_litert.interpreter")

# format -> the suffix of the file it writes.
FORMATS = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}

_NOT_KEPT = "does not run as in Keras in its runtime, so it was not written: "
# (pooling, format) -> (what the refusal says, why), for the masked token
# model of `test_masked_token_model`: `export` must refuse these and write
# nothing. A pair that starts to export fails its test: move it out.
REFUSED = {
    ("lse", "onnx"): (
        _NOT_KEPT + r".*INVALID_GRAPH.*Expm1",
        "tf2onnx has no Expm1/Log1p (LSE's near-mean sum): ONNX Runtime "
        "refuses the graph",
    ),
    ("covariance", "openvino"): (
        _NOT_KEPT + "(it gives NaN or inf|probabilities differs from Keras)",
        "with its projection (`dim`), a fully masked row changes the other "
        "rows of its batch in OpenVINO (by 1e31 and more)",
    ),
}
# (pooling, format) -> "exports" or "refused", filled by the token-model test.
MATRIX = {}

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 255, (4, 32, 32, 3)).astype("float32")


# Two lengths: the exports keep the input's free axis.
TOKEN_BATCHES = (token_ids(9), token_ids(5))


def _tiny_classifier(pooling):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    backbone = keras.Model(inputs, keras.layers.ReLU()(x))
    return kgp.build_classifier(
        backbone, 3, input_shape=(32, 32, 3), pooling=pooling, preprocessing="tf"
    )


# === Each runtime, called directly ===


def _onnx_runner(path):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [spec.name for spec in session.get_inputs()] == ["images"]
    names = [spec.name for spec in session.get_outputs()]
    return lambda x: list(zip(names, session.run(names, {"images": x}), strict=True))


def _litert_ops(path):
    interpreter = litert.Interpreter(model_path=path)
    return {op["op_name"] for op in interpreter._get_ops_details()}


def _litert_runner(path):
    ops = _litert_ops(path)
    not_builtin = [op for op in ops if op.startswith("Flex")]
    not_builtin += sorted(ops & {"CUSTOM", "DELEGATE"})
    assert not_builtin == [], f"LiteRT ops outside the builtins: {not_builtin}"
    interpreter = litert.Interpreter(model_path=path)
    ((key, signature),) = interpreter.get_signature_list().items()
    assert signature["inputs"] == ["images"]
    runner = interpreter.get_signature_runner(key)

    def run(x):
        outputs = runner(images=x)
        assert sorted(outputs) == sorted(signature["outputs"])
        return list(outputs.items())

    return run


def _openvino_runner(path):
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(path), "CPU")
    assert [port.get_names() for port in compiled.inputs] == [{"images"}]

    def run(x):
        results = compiled(x)
        return [(port.get_any_name(), results[port]) for port in compiled.outputs]

    return run


RUNNERS = {"onnx": _onnx_runner, "litert": _litert_runner, "openvino": _openvino_runner}


def _run(format, path, *batches):
    """The export's outputs by name (each name once) from its own runtime.

    One dict for one batch, else a list of them.
    """
    run = RUNNERS[format](os.fspath(path))
    results = []
    for x in batches:
        pairs = run(x)
        names = [name for name, _ in pairs]
        assert len(set(names)) == len(names), names
        results.append({name: np.asarray(value) for name, value in pairs})
    return results[0] if len(batches) == 1 else results


def _assert_matches(got, expected, atol=1e-5):
    assert np.all(np.isfinite(got)), got
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


@pytest.fixture(scope="module", autouse=True)
def _openvino_offline():
    # OpenVINO's converter sends telemetry unless CI is set; offline each
    # send blocks, which made an export take 10-30 s instead of 2 s.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CI", "true")
        yield


# === Every pooling, masked, in every format ===


@pytest.fixture(scope="module")
def token_models():
    """pooling -> (token model, Keras's predictions on TOKEN_BATCHES)."""
    built = {}

    def get(pooling):
        if pooling not in built:
            model = token_model(pooling)
            expected = [model.predict(ids, verbose=0) for ids in TOKEN_BATCHES]
            built[pooling] = model, expected
        return built[pooling]

    return get


@pytest.fixture(scope="module", autouse=True)
def _print_matrix():
    yield
    if MATRIX:
        formats = list(FORMATS)
        print("\n\npooling          " + "".join(f"{f:<10}" for f in formats))
        for pooling in kgp.POOLINGS:
            cells = [MATRIX.get((pooling, f), "-") for f in formats]
            print(f"{pooling:<17}" + "".join(f"{cell:<10}" for cell in cells))
        for (pooling, format), (_, why) in REFUSED.items():
            if MATRIX.get((pooling, format)) == "refused":
                print(f"  {pooling} in {format}: {why}")


@pytest.mark.parametrize(
    ("pooling", "format"),
    [
        pytest.param(pooling, format, id=f"{pooling}-{format}")
        for pooling in kgp.POOLINGS
        for format in FORMATS
    ],
)
def test_masked_token_model(pooling, format, token_models, tmp_path):
    model, expected = token_models(pooling)
    path = tmp_path / f"model{FORMATS[format]}"
    if (pooling, format) in REFUSED:
        message, why = REFUSED[pooling, format]
        try:
            kgp.export(model, path, format=format)
        except ValueError as error:
            assert str(error).startswith(f"The {format} "), str(error)
            assert re.search(message, str(error)), str(error)
        else:
            pytest.fail(f"{pooling} now exports to {format} ({why}): update REFUSED")
        assert os.listdir(tmp_path) == []
        MATRIX[pooling, format] = "refused"
        return
    assert kgp.export(model, path, format=format) == str(path)
    results = _run(format, path, *TOKEN_BATCHES)
    for outputs, want in zip(results, expected, strict=True):
        assert list(outputs) == ["probabilities"]
        _assert_matches(outputs["probabilities"], want)
    MATRIX[pooling, format] = "exports"


# === Image classifiers ===


@pytest.fixture(scope="module")
def image_model():
    """pooling -> (tiny image classifier, Keras's predictions on IMAGES)."""
    built = {}

    def get(pooling):
        if pooling not in built:
            model = _tiny_classifier(pooling)
            built[pooling] = model, model.predict(IMAGES, verbose=0)
        return built[pooling]

    return get


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("pooling", ["avg", "gem", "attention", "mixed"])
def test_image_classifier(pooling, format, image_model, tmp_path):
    model, expected = image_model(pooling)
    path = kgp.export(model, tmp_path / f"model{FORMATS[format]}", format=format)
    outputs = _run(format, path, IMAGES)
    assert list(outputs) == ["probabilities"]
    _assert_matches(outputs["probabilities"], expected)


# === Mixed precision: exported in float32 ===


def _onnx_float16_tensors(path):
    """The names of the float16 tensors and casts in an ONNX graph."""
    graph = onnx.load(path).graph
    float16 = onnx.TensorProto.FLOAT16
    found = [t.name for t in graph.initializer if t.data_type == float16]
    values = (*graph.input, *graph.output, *graph.value_info)
    found += [v.name for v in values if v.type.tensor_type.elem_type == float16]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == float16:
                found.append(node.name)
            if attribute.name == "value" and attribute.t.data_type == float16:
                found.append(node.name)
    return found


def _openvino_16_bit_ops(path):
    model = openvino.Core().read_model(path)
    sixteen = {openvino.Type.f16, openvino.Type.bf16}
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        for index in range(op.get_output_size())
        if op.get_output_element_type(index) in sixteen
    ]


def _input_dtype(format, path):
    if format == "onnx":
        (spec,) = onnxruntime.InferenceSession(path).get_inputs()
        return {"tensor(float)": "float32", "tensor(int32)": "int32"}[spec.type]
    if format == "litert":
        (spec,) = litert.Interpreter(model_path=path).get_input_details()
        return np.dtype(spec["dtype"]).name
    (port,) = openvino.Core().read_model(path).inputs
    return port.get_element_type().to_dtype().name


@pytest.fixture(scope="module")
def mixed_models():
    """kind -> (the model under mixed_float16, its float32 twin, its inputs)."""
    builders = {
        "tokens": (lambda: token_model("avg"), TOKEN_BATCHES[0]),
        "images": (lambda: _tiny_classifier("gem"), IMAGES),
    }
    models = {}
    for kind, (build, x) in builders.items():
        keras.config.set_dtype_policy("mixed_float16")
        try:
            mixed = build()
        finally:
            keras.config.set_dtype_policy("float32")
        twin = build()
        twin.set_weights(mixed.get_weights())
        models[kind] = mixed, twin, x
    return models


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("kind", ["tokens", "images"])
def test_mixed_float16_exports_in_float32(kind, format, mixed_models, tmp_path):
    mixed, twin, x = mixed_models[kind]
    assert "float16" in {layer.compute_dtype for layer in mixed.layers}
    assert {layer.compute_dtype for layer in twin.layers} == {"float32"}
    path = kgp.export(mixed, tmp_path / f"model{FORMATS[format]}", format=format)
    assert _input_dtype(format, path) == ("int32" if kind == "tokens" else "float32")
    got = _run(format, path, x)["probabilities"]
    _assert_matches(got, twin.predict(x, verbose=0))
    _assert_matches(got, mixed.predict(x, verbose=0).astype("float32"), atol=1e-2)
    if format == "onnx":
        assert _onnx_float16_tensors(path) == []
    elif format == "openvino":
        assert _openvino_16_bit_ops(path) == []
    # LiteRT: `_run` checked that every op is a builtin.


# === Names: one input `images`, the served outputs and no others ===


def _two_output_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    pooled, scores = kgp.GlobalAttentionPooling(name="pooler")(
        features, return_attention_scores=True
    )
    species = keras.layers.Dense(3, activation="softmax", name="classes")(pooled)
    return keras.Model(inputs, {"species": species, "where": scores})


@pytest.mark.parametrize("format", ["onnx", "litert", "openvino"])
def test_dict_outputs_keep_their_keys(format, tmp_path):
    model = _two_output_model()
    expected = model.predict(IMAGES, verbose=0)
    path = kgp.export(model, tmp_path / f"model{FORMATS[format]}", format=format)
    outputs = _run(format, path, IMAGES)
    assert sorted(outputs) == ["species", "where"]
    for name, value in outputs.items():
        _assert_matches(value, expected[name])
    # kgp.load_exported gives what the runtime gives.
    loaded = kgp.load_exported(path)(IMAGES)
    assert sorted(loaded) == ["species", "where"]
    for name, value in loaded.items():
        np.testing.assert_array_equal(value, outputs[name])


# === Quantization ===


def _brightness_images(count, seed):
    """Images whose class (0, 1, 2) sets their mean brightness, some near a boundary."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 3)
    brightness = 50.0 + 75.0 * labels + rng.normal(0, 18, count)
    pixels = brightness[:, None, None, None] + rng.normal(0, 25, (count, 32, 32, 3))
    return np.clip(pixels, 0, 255).astype("float32"), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier fit on brightness, its data, and its float32 export sizes."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    model = kgp.build_classifier(
        keras.Model(inputs, x),
        3,
        input_shape=(32, 32, 3),
        preprocessing="tf",
        freeze_backbone=False,
        dropout=0.0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="sparse_categorical_crossentropy",
    )
    x_train, y_train = _brightness_images(300, seed=0)
    model.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    x_test, y_test = _brightness_images(100, seed=1)
    folder = tmp_path_factory.mktemp("float32")
    sizes = {
        format: os.path.getsize(
            kgp.export(model, folder / f"model{FORMATS[format]}", format=format)
        )
        for format in ("onnx", "litert")
    }
    return model, x_train, x_test, y_test, sizes


def _has_int8_tensors(format, path):
    if format == "onnx":
        int8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
        return any(t.data_type in int8 for t in onnx.load(path).graph.initializer)
    details = litert.Interpreter(model_path=path).get_tensor_details()
    return any(np.dtype(t["dtype"]) == np.int8 for t in details)


@pytest.mark.parametrize("quantize", ["dynamic", "int8"])
@pytest.mark.parametrize("format", ["onnx", "litert"])
def test_quantized_export_agrees_with_keras(format, quantize, trained, tmp_path):
    model, x_train, x_test, y_test, sizes = trained
    expected = model.predict(x_test, verbose=0).argmax(axis=-1)
    # Learned, not one constant class: agreeing with Keras then means something.
    assert np.mean(expected == y_test) >= 0.9
    path = kgp.export(
        model,
        tmp_path / f"model{FORMATS[format]}",
        format=format,
        quantize=quantize,
        calibration=x_train[:64] if quantize == "int8" else None,
    )
    assert os.path.getsize(path) < 0.7 * sizes[format]
    assert _has_int8_tensors(format, path)
    probabilities = _run(format, path, x_test)["probabilities"]
    assert np.all(np.isfinite(probabilities))
    predicted = probabilities.argmax(axis=-1)
    print(
        f"\n{format} {quantize}: {os.path.getsize(path)} bytes (float32 "
        f"{sizes[format]}), agrees with Keras on {np.mean(predicted == expected):.0%}, "
        f"accuracy {np.mean(predicted == y_test):.0%} (Keras "
        f"{np.mean(expected == y_test):.0%})"
    )
    # 100 images: 95 agree leaves room for a few near a class boundary.
    assert np.mean(predicted == expected) >= 0.95


def _head_ops_and_int8(format, path):
    """`(name, is int8)` of each op of the pooling head and of the rest."""
    if format == "onnx":
        graph = onnx.load(path).graph
        quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
        return [
            (node.name, any(i in quantized for i in node.output)) for node in graph.node
        ]
    details = litert.Interpreter(model_path=path).get_tensor_details()
    return [(t["name"], np.dtype(t["dtype"]) == np.int8) for t in details]


@pytest.mark.parametrize("format", ["onnx", "litert"])
def test_int8_keeps_the_pooling_head_in_float(format, tmp_path):
    # With every op in int8, LiteRT's attention head of compare's default run
    # agreed with Keras on 13% of the test images (docs/deployment.md).
    model = _tiny_classifier("attention")
    path = kgp.export(
        model,
        tmp_path / f"model{FORMATS[format]}",
        format=format,
        quantize="int8",
        calibration=IMAGES,
    )
    ops = _head_ops_and_int8(format, path)
    head = re.compile(r"(^|;)classifier(_\d+)?/(pooler|dropout|predictions)(_\d+)?/")
    in_head = [quantized for name, quantized in ops if head.search(name)]
    elsewhere = [quantized for name, quantized in ops if not head.search(name)]
    assert in_head and not any(in_head)
    assert any(elsewhere)  # the backbone is quantized


# === Refusals ===


def _small_model():
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2)(kgp.GlobalAveragePooling()(inputs))
    return keras.Model(inputs, outputs)


BAD_ARGUMENTS = {
    "format": ({"format": "tflite"}, "Received: format='tflite'"),
    "format-case": ({"format": "ONNX"}, "Received: format='ONNX'"),
    "onnx-suffix": (
        {"format": "onnx", "path": "model.tflite"},
        "Received: path=.*model.tflite",
    ),
    "litert-suffix": (
        {"format": "litert", "path": "model.onnx"},
        "Received: path=.*model.onnx",
    ),
    "openvino-suffix": (
        {"format": "openvino", "path": "model.bin"},
        "Received: path=.*model.bin",
    ),
    "precision-typo": (
        {"format": "onnx", "precision": "fp32"},
        "Received: precision='fp32'",
    ),
    "quantize-openvino": (
        {"format": "openvino", "quantize": "dynamic"},
        "Received: quantize='dynamic'",
    ),
    "quantize-typo": (
        {"format": "onnx", "quantize": "int4"},
        "Received: quantize='int4'",
    ),
    "int8-without-calibration": (
        {"format": "litert", "quantize": "int8"},
        "calibration.*quantize='int8'",
    ),
    "calibration-without-int8": (
        {"format": "litert", "calibration": np.zeros((4, 8, 8, 3))},
        "calibration.*quantize=None",
    ),
    "calibration-shape": (
        {"format": "onnx", "quantize": "int8", "calibration": np.zeros((4, 8, 8))},
        r"Received: shape \(4, 8, 8\)",
    ),
}


@pytest.mark.parametrize(
    ("arguments", "message"), BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys()
)
def test_bad_arguments_are_refused(arguments, message, tmp_path):
    arguments = dict(arguments)
    format = arguments.pop("format")
    path = tmp_path / arguments.pop("path", f"model{FORMATS.get(format, '.onnx')}")
    with pytest.raises(ValueError, match=message):
        kgp.export(_small_model(), path, format=format, **arguments)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("format", FORMATS)
def test_an_existing_file_is_kept_without_overwrite(format, tmp_path):
    path = tmp_path / f"model{FORMATS[format]}"
    path.write_bytes(b"someone's model")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kgp.export(_small_model(), path, format=format)
    assert path.read_bytes() == b"someone's model"
    assert os.listdir(tmp_path) == [path.name]
    kgp.export(_small_model(), path, format=format, overwrite=True)
    assert path.read_bytes() != b"someone's model"
    assert sorted(_run(format, path, IMAGES[:2, :8, :8])) == ["logits"]


def test_verify_false_keeps_a_refused_export(token_models, tmp_path):
    # test_masked_token_model[onnx-lse] saw it refused.
    model, _ = token_models("lse")
    path = kgp.export(model, tmp_path / "kept.onnx", format="onnx", verify=False)
    assert os.listdir(tmp_path) == ["kept.onnx"]
    # What verification caught: ONNX Runtime cannot load the graph.
    invalid = onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph
    with pytest.raises(invalid, match="Expm1"):
        onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_other_backends_are_refused_by_name(tmp_path, monkeypatch):
    # Only the backend's name is read before refusing: no need to start jax.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="Received: backend='jax'"):
        kgp.export(_small_model(), tmp_path / "model.onnx", format="onnx")
    assert os.listdir(tmp_path) == []


# === A model that was never called ===


def test_never_called_functional_model_exports_to_onnx(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(2)(kgp.GlobalGeMPooling()(x))
    model = keras.Model(inputs, outputs)
    path = kgp.export(model, tmp_path / "model.onnx", format="onnx")
    x = IMAGES[:, :8, :8] / 255.0  # logits near 1, for an absolute tolerance
    outputs = _run("onnx", path, x)
    assert list(outputs) == ["logits"]
    _assert_matches(outputs["logits"], model.predict(x, verbose=0))
