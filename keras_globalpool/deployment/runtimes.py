"""Run an exported model in its own runtime: ONNX Runtime, LiteRT, OpenVINO."""

import os

import numpy as np

from keras_globalpool.deployment.extras import require


def _onnx(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (spec,) = session.get_inputs()
    dtype = _ONNX_TYPES[spec.type]
    names = [output.name for output in session.get_outputs()]

    def predict(x):
        values = session.run(names, {spec.name: np.asarray(x).astype(dtype)})
        return dict(zip(names, values, strict=True))

    return predict


_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
}


def _litert(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    ((name, spec),) = runner.get_input_details().items()

    def predict(x):
        return runner(**{name: np.asarray(x).astype(spec["dtype"])})

    return predict


def _openvino(path):
    import openvino

    compiled = openvino.Core().compile_model(path, "CPU")
    (port,) = compiled.inputs
    dtype = port.get_element_type().to_dtype()

    def predict(x):
        results = compiled(np.asarray(x).astype(dtype))
        return {port.get_any_name(): results[port] for port in compiled.outputs}

    return predict


def _saved_model(path):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    ((name, spec),) = serve.structured_input_signature[1].items()

    def predict(x):
        outputs = serve(**{name: tf.constant(np.asarray(x), spec.dtype)})
        return {key: value.numpy() for key, value in outputs.items()}

    return predict


_LOADERS = {".onnx": ("onnx", _onnx), ".tflite": ("litert", _litert)}
_LOADERS[".xml"] = ("openvino", _openvino)


def load_exported(path):
    """Loads an exported model in its own runtime, for predictions.

    Args:
        path: a `.onnx` file (ONNX Runtime), a `.tflite` file (LiteRT), an
            OpenVINO `.xml` file (its `.bin` beside it) or a SavedModel
            folder (TensorFlow, its `serving_default` signature).

    Returns:
        A function that takes one batch (a NumPy array, cast to the input's
        dtype) and returns a dict of NumPy arrays by output name.

    Example:

    >>> model = keras.Sequential(
    ...     [keras.Input((4, 4, 3)), kgp.GlobalGeMPooling(), keras.layers.Dense(2)])
    >>> path = kgp.export(model, "pooled.onnx", format="onnx")
    >>> predict = kgp.load_exported(path)
    >>> sorted(predict(np.ones((2, 4, 4, 3))))
    ['logits']
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _saved_model(path)
    suffix = os.path.splitext(path)[1]
    if suffix not in _LOADERS or not os.path.isfile(path):
        raise ValueError(
            "`path` must be an existing .onnx, .tflite or .xml file, or a "
            f"SavedModel folder. Received: path={path!r}"
        )
    format, loader = _LOADERS[suffix]
    require(format)
    return loader(path)
