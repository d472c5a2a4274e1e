"""Each format's converter, with the inputs and outputs named as TF Serving's.

The converters are TensorFlow's (`tf.lite`), tf2onnx (through Keras's
`model.export`) and OpenVINO's; this module only names, trims and quantizes
around them.
"""

import os
import tempfile

import keras

from keras_globalpool import serving
from keras_globalpool.deployment import quantization
from keras_globalpool.deployment.quantization import INPUT_NAME


def _output_names(model):
    return [output.name for output in serving._served_outputs(model)]


def _rename_onnx(path, names):
    """Names the graph's one input `images` and its outputs `names`."""
    import onnx

    proto = onnx.load(path)
    graph = proto.graph
    renames = {graph.input[0].name: INPUT_NAME}
    renames.update(
        {output.name: name for output, name in zip(graph.output, names, strict=True)}
    )
    for value in (*graph.input, *graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    onnx.save(proto, path)


def to_onnx(model, path, quantize, batches):
    """Writes `model` as ONNX with tf2onnx, through Keras's `model.export`."""
    model.export(path, format="onnx", verbose=False)
    _rename_onnx(path, _output_names(model))
    if quantize is not None:
        quantization.quantize_onnx(model, path, quantize, batches)


def _serving_function(model):
    """A `tf.function` of the model with named input and outputs."""
    import tensorflow as tf

    spec = model.inputs[0]
    names = _output_names(model)

    @tf.function(
        input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=INPUT_NAME)]
    )
    def serve(images):
        values = keras.tree.flatten(model(images, training=False))
        return dict(zip(names, values, strict=True))

    return serve


def to_litert(model, path, quantize, batches):
    """Writes `model` for LiteRT with TensorFlow's converter, builtin ops only.

    As Keras's own LiteRT export: a SavedModel first, then the converter.
    """
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", _serving_function(model))
    with tempfile.TemporaryDirectory() as saved_model:
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        # Only builtin ops: Flex (SELECT_TF_OPS) is not in the standard runtime.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize is None:
            converted = converter.convert()
        elif quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converted = converter.convert()
        else:
            # The float model's op names tell which ops stay float.
            float_model = converter.convert()
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([b] for b in batches)
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,  # ops with no int8 kernel
            ]
            converted = quantization.litert_int8(model, converter, float_model, batches)
    with open(path, "wb") as file:
        file.write(converted)


def _result(converted, index, name):
    """The result of OpenVINO's model for the model's output `index`."""
    for result in converted.get_results():
        names = result.output(0).get_names()
        identity = f"Identity_{index}:0" if index else "Identity:0"
        if name in names or identity in names:
            return result
    return None


def to_openvino(model, path, quantize, batches):
    """Writes `model` for OpenVINO through Keras's `model.export`.

    OpenVINO's conversion of the Keras graph also returns inner tensors,
    such as masks; only the model's outputs are kept: those named by a dict
    output's keys, or else `Identity`, `Identity_1`, ... in order.
    """
    import openvino

    del quantize, batches  # OpenVINO offers no quantization here.
    model.export(path, format="openvino", verbose=False)
    converted = openvino.Core().read_model(path)
    names = _output_names(model)
    kept = [_result(converted, index, name) for index, name in enumerate(names)]
    if any(result is None for result in kept):
        raise ValueError(
            f"OpenVINO's conversion did not return the model's {len(names)} outputs."
        )
    for result in converted.get_results():
        if all(result is not keep for keep in kept):
            converted.remove_result(result)
    for result, name in zip(kept, names, strict=True):
        result.output(0).get_tensor().set_names({name})
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    os.remove(path)
    os.remove(companions(path)[0])
    openvino.save_model(converted, path, compress_to_fp16=False)


def companions(path):
    """The files written beside `path`: OpenVINO's weights."""
    return [os.path.splitext(path)[0] + ".bin"] if path.endswith(".xml") else []


CONVERTERS = {"onnx": to_onnx, "litert": to_litert, "openvino": to_openvino}
