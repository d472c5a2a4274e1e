"""`export_saved_model`: a TF Serving SavedModel that takes raw images."""

import os
import uuid

import keras
import tensorflow as tf


def _next_version(export_dir):
    versions = [int(entry) for entry in os.listdir(export_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


def _serving_function(model, jit_compile):
    images = model.inputs[0]
    spec = tf.TensorSpec(images.shape, images.dtype, name="images")

    @tf.function(input_signature=[spec], jit_compile=jit_compile, autograph=False)
    def serve(images):
        probabilities = model(images, training=False)
        return {
            "probabilities": probabilities,
            "class_ids": tf.argmax(probabilities, axis=-1),
        }

    serve.get_concrete_function()
    return serve


def export_saved_model(model, export_dir, version=None, jit_compile=False):
    """Exports a classifier as a SavedModel in TF Serving's layout.

    Writes `export_dir/<version>/`, the layout `tensorflow_model_server
    --model_base_path=export_dir` watches. Its `serving_default` signature
    takes `images`, a batch of raw images (0-255) of the model's input shape
    and dtype (float32 for the builders' models), and returns
    `probabilities` (the model's output) and `class_ids` (their int64
    argmax). The SavedModel holds only
    TensorFlow graphs and variables: it runs in TF Serving or
    `tf.saved_model.load` without Keras or keras-globalpool. It is written
    to a temporary folder first and renamed, so a server polling
    `export_dir` never sees a half-written version.

    The serving function is not compiled with XLA by default: an
    XLA-must-compile function fails in a TF Serving build without XLA
    support. `jit_compile=True` opts in; run the server with
    `--xla_cpu_compilation_enabled=true` on CPU.

    Args:
        model: a single-input `keras.Model` on the TensorFlow backend, such
            as one from `kgp.build_classifier`.
        export_dir: string or path. The model's base folder, created if
            missing.
        version: optional int >= 0. The version folder to write. Defaults to
            `None`: one more than the largest existing version, or 1.
        jit_compile: bool. Compile the serving function with XLA. Defaults
            to `False`.

    Returns:
        The path of the version folder, as a string.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 5, input_shape=(96, 96, 3), weights=None)
    >>> path = kgp.export_saved_model(model, "saved_models/flowers")
    >>> os.path.basename(path)
    '1'
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "`export_saved_model` needs the TensorFlow backend. "
            f"Received: backend={keras.backend.backend()!r}"
        )
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 0
    ):
        raise ValueError(
            f"`version` must be None or an integer >= 0. Received: version={version!r}"
        )
    export_dir = os.fspath(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    if version is None:
        version = _next_version(export_dir)
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"Version {version} already exists: {path}")

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", _serving_function(model, jit_compile))
    # TF Serving ignores folders whose name is not a number.
    staging = os.path.join(export_dir, f"tmp-{version}-{uuid.uuid4().hex}")
    archive.write_out(staging, verbose=False)
    os.rename(staging, path)
    return path
