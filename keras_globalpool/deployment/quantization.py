"""int8 for the backbone, float for the pooling head: quantizing that keeps accuracy.

Measured on `compare`'s default run (docs/deployment.md): quantizing every
op, LiteRT's int8 attention head agreed with Keras on 13% of the test images
and ONNX's lost 1.7 points; attention's softmax over positions and GeM's
powers need more than 8 bits. The pooling layer and the layers after it are
therefore left in float: they hold a tiny share of the weights and the time.
"""

import os
import re

from keras_globalpool.pooler import find_pooling_layer

INPUT_NAME = "images"


def head_pattern(model):
    """A regex for the graph names of the pooling layer and the layers after it.

    Converted graphs name each op by its layer's scope, such as
    `classifier_1/pooler_1/Exp`; LiteRT joins fused ops' names with `;`.

    Args:
        model: a functional or Sequential `keras.Model`.

    Returns:
        A compiled pattern, or `None` where the model has no pooling layer.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 3, input_shape=(32, 32, 3), weights=None)
    >>> bool(head_pattern(model).search("classifier_1/pooler_1/Exp"))
    True
    >>> bool(head_pattern(model).search("classifier_1/backbone_1/Conv1/Conv2D"))
    False
    """
    try:
        pooler = find_pooling_layer(model)
    except ValueError:
        return None
    layers = model.layers[model.layers.index(pooler) :]
    names = "|".join(re.escape(layer.name) for layer in layers)
    scope = re.escape(model.name)
    return re.compile(rf"(?:^|;){scope}(?:_\d+)?/(?:{names})(?:_\d+)?(?:/|;|:|$)")


class _CalibrationReader:
    """ONNX Runtime's calibration reader over a list of batches."""

    def __init__(self, batches):
        self._feeds = iter([{INPUT_NAME: batch} for batch in batches])

    def get_next(self):
        return next(self._feeds, None)


def quantize_onnx(model, path, quantize, batches):
    """Quantizes the ONNX file at `path` in place, the head left in float."""
    import onnx
    from onnxruntime import quantization

    pattern = head_pattern(model)
    nodes = [node.name for node in onnx.load(path).graph.node]
    excluded = [name for name in nodes if pattern and pattern.search(name)]
    float_path = f"{path}.float.onnx"
    os.replace(path, float_path)
    # 7-bit weights: on x86 CPUs without VNNI (AVX2, most AVX-512), ONNX
    # Runtime's uint8 x int8 products saturate (its quantization guide). On
    # the default compare run, attention lost 1.7 points with 8 bits, none
    # with 7.
    options = {"nodes_to_exclude": excluded, "reduce_range": True}
    if quantize == "dynamic":
        quantization.quantize_dynamic(float_path, path, **options)
    else:
        quantization.quantize_static(
            float_path,
            path,
            _CalibrationReader(batches),
            quant_format=quantization.QuantFormat.QDQ,
            **options,
        )
    os.remove(float_path)


def litert_int8(model, converter, float_model, batches):
    """Converts to LiteRT with int8 ops, the head's ops left in float.

    Args:
        model: the Keras model being converted.
        converter: a `tf.lite.TFLiteConverter` set up for int8.
        float_model: bytes of the float LiteRT model, to read op names from.
        batches: list of calibration batches.

    Returns:
        bytes of the quantized model.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    pattern = head_pattern(model)
    if pattern is None:
        return converter.convert()
    tensors = Interpreter(model_content=float_model).get_tensor_details()
    head = [t["name"] for t in tensors if pattern.search(t["name"])]
    # TensorFlow's selective quantization: the denylisted ops stay float.
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=lambda: ([batch] for batch in batches),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=head
        ),
    )
    return debugger.get_nondebug_quantized_model()
