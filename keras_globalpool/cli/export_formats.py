"""`compare --export-format`: each head exported, then measured in its runtime.

Each head's first-seed model goes beside its `model.keras`, as
`model.onnx`, `model.tflite` or `model.xml` (OpenVINO), through
`kgp.export`, which checks the export in its runtime before writing it.
Then the export runs there on the run's test images, and its accuracy,
agreement with Keras, size and latency become the head's `ExportResult`.
"""

import os

import numpy as np

from keras_globalpool.cli.data.stream import head as head_images
from keras_globalpool.cli.data.stream import image_batches
from keras_globalpool.cli.interruption import is_interruption
from keras_globalpool.cli.measure import call_latency_ms
from keras_globalpool.cli.results import ExportResult
from keras_globalpool.deployment import export, load_exported
from keras_globalpool.deployment.formats import FORMATS

# Training images that calibrate an int8 export.
CALIBRATION_IMAGES = 256
# Test images per call of the exported model.
_BATCH = 64


def export_size(path):
    """Bytes on disk of an export, OpenVINO's `.bin` beside its `.xml` included.

    Args:
        path: the file `kgp.export` wrote.

    Returns:
        int.
    """
    path = os.fspath(path)
    files = [path]
    if path.endswith(".xml"):
        files.append(path[: -len(".xml")] + ".bin")
    return sum(os.path.getsize(file) for file in files if os.path.isfile(file))


def _probabilities(predict, dataset):
    """The export's first output (`probabilities` for a softmax head) on `dataset`."""
    batches = []
    for images in image_batches(dataset, _BATCH):
        outputs = predict(images)
        batches.append(outputs.get("probabilities", next(iter(outputs.values()))))
    return np.concatenate(batches)


def export_and_measure(model, folder, settings, train, test, keras_measures):
    """Exports `model` to `settings.export_format` and measures it in its runtime.

    A `ValueError` from `kgp.export`, raised when the format or its
    converter cannot express the model, is recorded and the run goes on;
    an interruption is raised again.

    Args:
        model: the head's first-seed `keras.Model`.
        folder: `pathlib.Path` of the head's models folder.
        settings: `CompareSettings` whose `deploys` is true.
        train: the run's training `ImageDataset` or `FileImageDataset`;
            `quantize="int8"` calibrates on its first `CALIBRATION_IMAGES`
            images.
        test: the run's test images, of the same kind, read a batch at a
            time.
        keras_measures: `(probabilities, latency_ms)` of the Keras model on
            the test images, to compare with.

    Returns:
        `ExportResult`.
    """
    format, quantize = settings.export_format, settings.quantize
    calibration = None
    if quantize == "int8":
        calibration = head_images(train, CALIBRATION_IMAGES)
    try:
        path = export(
            model,
            folder / f"model{FORMATS[format]}",
            format=format,
            quantize=quantize,
            calibration=calibration,
        )
    except ValueError as error:
        if is_interruption(error):
            raise
        return ExportResult(format, quantize, error=" ".join(str(error).split()))
    predict = load_exported(path)
    predicted = np.argmax(_probabilities(predict, test), axis=-1)
    keras_probabilities, keras_latency_ms = keras_measures
    keras_predicted = np.argmax(keras_probabilities, axis=-1)
    return ExportResult(
        format,
        quantize,
        path=str(path),
        size_bytes=export_size(path),
        accuracy=float(np.mean(predicted == test.y)),
        keras_accuracy=float(np.mean(keras_predicted == test.y)),
        agreement=float(np.mean(predicted == keras_predicted)),
        latency_ms=call_latency_ms(predict, head_images(test, 1)),
        keras_latency_ms=keras_latency_ms,
    )


def export_line(head, result):
    """What the console says of one head's export, in one line."""
    if result.error is not None:
        return f"{head}: not exported to {result.format}: {result.error}"
    quantized = f", {result.quantize}" if result.quantize else ""
    change = 100 * (result.accuracy - result.keras_accuracy)
    return (
        f"{head}: {result.format}{quantized} export, test accuracy "
        f"{result.accuracy:.1%} ({change:+.1f} points against Keras), agrees "
        f"with Keras on {result.agreement:.1%} of the test images, "
        f"{result.size_bytes / 1000:,.1f} KB, {result.latency_ms:.2f} ms per image"
    )
