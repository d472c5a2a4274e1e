"""The optional packages each export format needs, and a clear error without."""

import importlib

# format -> (modules it imports, the extra that installs them)
NEEDS = {
    "onnx": (("tf2onnx", "onnx", "onnxruntime"), "onnx"),
    "litert": (("ai_edge_litert",), "litert"),
    "openvino": (("openvino",), "openvino"),
}


def require(format):
    """Imports what `format` needs, or raises naming the extra to install.

    Args:
        format: an export format, such as `"onnx"`.

    Raises:
        ImportError: a package is missing; the message names the extra.

    Example:

    >>> require("tf_saved_model")  # TensorFlow alone
    """
    modules, extra = NEEDS.get(format, ((), None))
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ImportError(
                f"format={format!r} needs the package {module!r}. Install it "
                f"with: pip install 'keras-globalpool[{extra}]'"
            ) from error
