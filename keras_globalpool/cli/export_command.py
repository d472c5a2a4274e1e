"""`export`: convert a saved `.keras` model for TF Serving, ONNX, LiteRT or OpenVINO."""

import pathlib

import keras

from keras_globalpool.cli.data.directory import load_directory
from keras_globalpool.cli.data.npz import load_npz
from keras_globalpool.cli.data.transforms import resize, to_rgb
from keras_globalpool.deployment import export
from keras_globalpool.deployment.formats import FORMATS, QUANTIZATIONS
from keras_globalpool.serving import export_saved_model

# What each format is called where the command says what it wrote.
FORMAT_NAMES = {
    "tf_saved_model": "SavedModel for TF Serving",
    "onnx": "ONNX model",
    "litert": "LiteRT model",
    "openvino": "OpenVINO model",
}


def _check_format(format, precision, quantize, calibration):
    if format not in FORMATS:
        names = ", ".join(repr(name) for name in FORMATS)
        raise ValueError(
            f"`format` must be one of {{{names}}}. Received: format={format!r}"
        )
    offered = QUANTIZATIONS.get(format, ())
    if quantize is not None and quantize not in offered:
        formats = " or ".join(repr(name) for name in QUANTIZATIONS)
        raise ValueError(
            f"`quantize` must be 'dynamic' or 'int8' with format={formats}; "
            f"format={format!r} offers none. Received: quantize={quantize!r}"
        )
    if (quantize == "int8") != (calibration is not None):
        raise ValueError(
            "`calibration` (a folder of class subfolders of images, or a .npz "
            "file) goes with, and only with, quantize='int8'. Received: "
            f"quantize={quantize!r}, calibration={calibration!r}"
        )
    if format == "tf_saved_model" and precision is not None:
        raise ValueError(
            "`precision` applies to format='onnx', 'litert' or 'openvino'. "
            f"Received: precision={precision!r} with format='tf_saved_model'"
        )


def _check_out(out, format, version, threshold, overwrite):
    """Checks `out` against `format` and the options that apply to it."""
    out = pathlib.Path(out)
    suffix = FORMATS[format]
    by_suffix = {s: f for f, s in FORMATS.items() if s is not None}
    if suffix is None:
        if out.suffix in by_suffix:
            raise ValueError(
                "`out` is TF Serving's base folder for format='tf_saved_model', "
                f"but {str(out)!r} names a {out.suffix} file: pass "
                f"format={by_suffix[out.suffix]!r} (--format) to write one"
            )
        if overwrite:
            raise ValueError(
                "`overwrite` applies to a file format: a SavedModel goes to a "
                "new version folder (or `version`), never over another. "
                "Received: overwrite=True with format='tf_saved_model'"
            )
        return
    if version is not None or threshold is not None:
        raise ValueError(
            "`version` and `threshold` apply to format='tf_saved_model' only. "
            f"Received: version={version!r}, threshold={threshold!r} with "
            f"format={format!r}"
        )
    if out.suffix != suffix:
        suggestion = out.with_suffix(suffix) if out.suffix else f"{out}{suffix}"
        raise ValueError(
            f"`out` must be a {suffix} file for format={format!r}, such as "
            f"{str(suggestion)!r}. Received: out={str(out)!r}"
        )
    written = [out, out.with_suffix(".bin")] if suffix == ".xml" else [out]
    existing = [str(path) for path in written if path.exists()]
    if existing and not overwrite:
        raise ValueError(
            f"`out` must not exist: {', '.join(existing)} does. Pass "
            "overwrite=True (--overwrite) to replace it"
        )


def calibration_images(path, model):
    """The images of a calibration folder or `.npz`, fitted to `model`'s input.

    Args:
        path: a folder of class subfolders of images, read with
            `load_directory` and resized to the model's input size, or a
            `.npz` file with `x` and `y`, read with `load_npz` (and resized
            too).
        model: a `keras.Model` whose one input is a batch of images,
            `(batch, height, width, channels)`.

    Returns:
        NumPy array of raw images (0-255) of the model's input shape.

    Example:

    >>> np.savez("calibration.npz", x=np.zeros((4, 8, 8), "uint8"), y=[0, 1, 0, 1])
    >>> model = keras.Sequential([keras.Input((6, 6, 3)), kgp.GlobalAveragePooling()])
    >>> calibration_images("calibration.npz", model).shape
    (4, 6, 6, 3)
    """
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ValueError(
            "`calibration` images suit a model whose input is a batch of images "
            "(height, width, 1 or 3 channels). Received: a model with input "
            f"shape {shape}"
        )
    size = None if None in shape[:2] else shape[:2]
    path = pathlib.Path(path)
    if path.is_dir():
        dataset = load_directory(path, image_size=size)
    elif path.suffix == ".npz":
        dataset = load_npz(path)
    else:
        raise ValueError(
            "`calibration` must be a folder of class subfolders of images or a "
            f".npz file. Received: calibration={str(path)!r}"
        )
    if size is not None:
        dataset = resize(dataset, size)
    if shape[-1] == 3:
        dataset = to_rgb(dataset)
    if dataset.image_shape[-1] != shape[-1]:
        raise ValueError(
            f"`calibration` images must be grayscale for this model, whose input "
            f"has 1 channel. Received: {str(path)!r}, whose images have 3"
        )
    return dataset.x


def export_keras_file(
    model_path,
    out,
    version=None,
    threshold=None,
    format="tf_saved_model",
    precision=None,
    quantize=None,
    calibration=None,
    overwrite=False,
):
    """Loads a `.keras` file safely and exports it, as `kgp.export` does.

    Every argument is checked before the model loads.

    Args:
        model_path: path of a `.keras` file, such as one `compare` saved.
        out: for `"tf_saved_model"`, the model's base folder (the export
            goes to `out/<version>/`); else the file to write, ending in
            `.onnx`, `.tflite` or `.xml` (OpenVINO's `.bin` beside it).
        version: optional int, for `"tf_saved_model"` only. Defaults to the
            next free version number.
        threshold: optional float in (0, 1), for `"tf_saved_model"` only.
            The decision threshold of a sigmoid or single-logit head, as in
            `kgp.export_saved_model`. Defaults to `0.5`.
        format: string. A format of `kgp.export`: `"tf_saved_model"`
            (default), `"onnx"`, `"litert"` or `"openvino"`.
        precision: optional string, `"float32"` (default) or `"model"`, for
            the file formats.
        quantize: optional string, `"dynamic"` or `"int8"`, for `"onnx"` and
            `"litert"`.
        calibration: path of a folder of class subfolders of images or of a
            `.npz` file, for `quantize="int8"` only; see
            `calibration_images`.
        overwrite: bool. Replace an existing file (not for
            `"tf_saved_model"`). Defaults to `False`.

    Returns:
        The path written, as a string: the version folder for TF Serving.

    Example:

    >>> import os
    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 3, input_shape=(32, 32, 3), weights=None)
    >>> model.save("flowers.keras")
    >>> os.path.basename(export_keras_file("flowers.keras", "served/flowers"))
    '1'
    >>> export_keras_file("flowers.keras", "flowers.onnx", format="onnx")
    'flowers.onnx'
    """
    path = pathlib.Path(model_path)
    if path.suffix != ".keras" or not path.is_file():
        raise ValueError(
            "`model` must be an existing .keras file. "
            f"Received: model={str(model_path)!r}"
        )
    _check_format(format, precision, quantize, calibration)
    _check_out(out, format, version, threshold, overwrite)
    # keras_globalpool is imported, so its layers load without custom_objects.
    model = keras.models.load_model(path, safe_mode=True)
    if format == "tf_saved_model":
        threshold = 0.5 if threshold is None else threshold
        return export_saved_model(model, out, version=version, threshold=threshold)
    return export(
        model,
        out,
        format=format,
        precision=precision or "float32",
        quantize=quantize,
        calibration=None
        if calibration is None
        else calibration_images(calibration, model),
        overwrite=overwrite,
    )
