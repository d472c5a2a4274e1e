"""`export`: one model to TF Serving, ONNX, LiteRT or OpenVINO, checked in each."""

import os
import shutil
import tempfile

import keras
import numpy as np

from keras_globalpool import serving
from keras_globalpool.deployment import converters
from keras_globalpool.deployment.extras import require
from keras_globalpool.deployment.precision import float32_copy
from keras_globalpool.deployment.probes import probe_batches
from keras_globalpool.deployment.runtimes import load_exported

# format -> the suffix of the file it writes.
FORMATS = {
    "tf_saved_model": None,
    "onnx": ".onnx",
    "litert": ".tflite",
    "openvino": ".xml",
}
# format -> the quantizations it offers.
QUANTIZATIONS = {"onnx": ("dynamic", "int8"), "litert": ("dynamic", "int8")}
# How far an export may be from Keras before `export` refuses it, relative to
# the output's scale (its largest magnitude, or 1): float32 rounds the same
# sums in another order, 16 bits keep 3 decimal digits.
_TOLERANCE = {"float32": 1e-5, "model": 1e-2}


def _check_arguments(format, path, precision, quantize, calibration):
    if format not in FORMATS:
        raise ValueError(
            f"`format` must be one of {sorted(FORMATS)}. Received: format={format!r}"
        )
    if precision not in _TOLERANCE:
        raise ValueError(
            "`precision` must be 'float32' (the default: 16-bit models are "
            "exported in float32) or 'model' (the model's own dtype policy). "
            f"Received: precision={precision!r}"
        )
    offered = QUANTIZATIONS.get(format, ())
    if quantize is not None and quantize not in offered:
        raise ValueError(
            f"`quantize` must be None or one of {list(offered)} for "
            f"format={format!r}. Received: quantize={quantize!r}"
        )
    if (quantize == "int8") != (calibration is not None):
        raise ValueError(
            "`calibration` (a batch of typical inputs) goes with, and only "
            f"with, quantize='int8'. Received: quantize={quantize!r} and "
            f"calibration={'None' if calibration is None else 'an array'}"
        )
    suffix = FORMATS[format]
    if suffix is not None and not os.fspath(path).endswith(suffix):
        raise ValueError(
            f"`path` must end with {suffix!r} for format={format!r}. "
            f"Received: path={os.fspath(path)!r}"
        )


def _calibration_batches(model, calibration):
    """The calibration set as float32 batches of at most 16 inputs."""
    images = np.asarray(calibration, dtype="float32")
    shape = model.inputs[0].shape[1:]
    if images.ndim != len(shape) + 1 or len(images) == 0:
        raise ValueError(
            "`calibration` must be a non-empty array of inputs of shape "
            f"(samples, {', '.join(map(str, shape))}). "
            f"Received: shape {images.shape}"
        )
    return [images[start : start + 16] for start in range(0, len(images), 16)]


def _check_in_runtime(model, path, format, precision, quantized):
    """Runs the export on probe inputs; raises unless it matches Keras."""
    names = [output.name for output in serving._served_outputs(model)]
    try:
        predict = load_exported(path)
        for batch in probe_batches(model):
            want = keras.tree.flatten(model.predict_on_batch(batch))
            got = predict(batch)
            for name, expected in zip(names, want, strict=True):
                value = np.asarray(got[name], "float64")
                if not np.all(np.isfinite(value)):
                    raise ValueError("it gives NaN or inf where Keras does not")
                error = np.max(np.abs(value - expected), initial=0.0)
                scale = max(1.0, np.max(np.abs(expected), initial=0.0))
                if not quantized and error > _TOLERANCE[precision] * scale:
                    raise ValueError(
                        f"{name} differs from Keras by {error:.3g} (at most "
                        f"{_TOLERANCE[precision] * scale:.3g} allowed)"
                    )
    except Exception as error:  # The runtime's own errors are as telling.
        reason = str(error).strip().splitlines()[0][:300].replace(path, "<export>")
        raise ValueError(
            f"The {format} export of this model does not run as in Keras in "
            f"its runtime, so it was not written: {reason}. The format or its "
            "converter cannot express a layer of it; export it in another "
            "format, or pass verify=False to keep it anyway."
        ) from error


def _convert(model, path, format, quantize, batches):
    try:
        converters.CONVERTERS[format](model, path, quantize, batches)
    except (OSError, ImportError):
        raise
    except Exception as error:  # The converters raise their own classes.
        reason = str(error).strip().splitlines()[0][:300] if str(error) else ""
        raise ValueError(
            f"The {format} converter cannot convert this model: "
            f"{type(error).__name__}: {reason}"
        ) from error


def export(
    model,
    path,
    format="tf_saved_model",
    precision="float32",
    quantize=None,
    calibration=None,
    overwrite=False,
    verify=True,
):
    """Exports a model for TF Serving, ONNX Runtime, LiteRT or OpenVINO.

    The conversion is TensorFlow's (`tf.lite`), tf2onnx's (through Keras's
    `model.export`) or OpenVINO's; around it, `export`:

    - names the input `images` and the outputs as TF Serving's signature
      does (`probabilities` or `logits` for one output; dict keys or layer
      names for several), with no extra outputs;
    - exports a model trained under `mixed_float16` or `mixed_bfloat16` in
      float32 (`precision="float32"`), so its graph runs on every runtime,
      LiteRT's builtin ops included (LiteRT never gets Flex ops);
    - calls a model that was never called, as ONNX's converter needs;
    - with `verify=True`, runs the export in its runtime on probe inputs
      (padded and fully masked rows for token models, two lengths where the
      input's are free) and refuses to write it unless it is finite and
      matches Keras within 1e-5 of the output's scale (its largest
      magnitude, or 1), 1e-2 for `precision="model"` in 16 bits, or,
      quantized, is finite;
    - writes to a temporary name and renames, and never replaces an
      existing file unless `overwrite=True`.

    Args:
        model: a `keras.Model` with one input, on the TensorFlow backend.
        path: for `"tf_saved_model"`, TF Serving's base folder (the export
            goes to `path/<next version>/`, as `export_saved_model`, so it
            never replaces one); else
            the file to write: `.onnx`, `.tflite`, or OpenVINO's `.xml`
            (with its `.bin` beside it).
        format: `"tf_saved_model"` (default), `"onnx"`, `"litert"` or
            `"openvino"`.
        precision: `"float32"` (default) or `"model"`, to keep a 16-bit
            policy's compute in ONNX and OpenVINO.
        quantize: `None` (default), `"dynamic"` (int8 weights) or `"int8"`
            (int8 weights and activations, calibrated on `calibration`),
            for `"onnx"` and `"litert"`. The pooling layer and the layers
            after it stay in float: attention's softmax did not survive
            8 bits (docs/deployment.md).
        calibration: array of typical inputs, such as 100-500 training
            images, for `quantize="int8"`.
        overwrite: bool. Replace an existing file. Defaults to `False`.
        verify: bool. Check the export in its runtime. Defaults to `True`.

    Returns:
        The path written, as a string (the version folder for TF Serving).

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 5, input_shape=(96, 96, 3), weights=None)
    >>> kgp.export(model, "flowers.onnx", format="onnx")
    'flowers.onnx'
    >>> predict = kgp.load_exported("flowers.onnx")
    >>> predict(np.zeros((2, 96, 96, 3)))["probabilities"].shape
    (2, 5)
    """
    _check_arguments(format, path, precision, quantize, calibration)
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "`export` needs the TensorFlow backend. "
            f"Received: backend={keras.backend.backend()!r}"
        )
    serving._check_model(model)
    require(format)
    path = os.fspath(path)
    if format != "tf_saved_model" and not overwrite:
        for existing in (path, *converters.companions(path)):
            if os.path.exists(existing):
                raise FileExistsError(
                    f"{existing} exists; pass overwrite=True to replace it."
                )
    batches = None if calibration is None else _calibration_batches(model, calibration)
    if precision == "float32":
        model = float32_copy(model)
    # ONNX's converter needs a model that was called once.
    model.predict_on_batch(probe_batches(model)[0])
    if format == "tf_saved_model":
        return _saved_model(model, path, precision, verify)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=folder)
    try:
        written = os.path.join(staging, os.path.basename(path))
        _convert(model, written, format, quantize, batches)
        if verify:
            _check_in_runtime(model, written, format, precision, quantize is not None)
        for companion in converters.companions(written):
            os.replace(companion, os.path.join(folder, os.path.basename(companion)))
        os.replace(written, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _saved_model(model, path, precision, verify):
    """TF Serving's export, removed again unless it runs as in Keras."""
    version = serving.export_saved_model(model, path)
    if verify:
        try:
            _check_in_runtime(model, version, "tf_saved_model", precision, False)
        except ValueError:
            shutil.rmtree(version)
            raise
    return version
