"""`export_saved_model`: a TF Serving SavedModel that takes raw images."""

import dataclasses
import math
import numbers
import os
import uuid

import keras

from keras_globalpool.inputs import input_embedding

# The activation of the layer that makes an output: how to read its values.
_HEAD_KINDS = {
    keras.activations.softmax: "softmax",
    keras.activations.sigmoid: "sigmoid",
    keras.activations.linear: "logits",
}
# A single-output model's output, named by its kind (`None`: not a classifier).
_SINGLE_OUTPUT_NAMES = {
    "softmax": "probabilities",
    "sigmoid": "probabilities",
    "logits": "logits",
    None: "outputs",
}


@dataclasses.dataclass(frozen=True)
class _ServedOutput:
    """One model output in the signature, with its optional class decision."""

    name: str
    kind: str | None
    decision: str | None  # the decision's output name


def _producer(tensor):
    """The layer that computes `tensor`, looking inside nested models."""
    # A functional model records each symbolic tensor's layer in _keras_history.
    layer, _, index = tensor._keras_history
    while isinstance(layer, keras.Model) and hasattr(layer, "outputs"):
        layer, _, index = layer.outputs[index]._keras_history
    return layer


def _head_kind(layer):
    """`"softmax"`, `"sigmoid"`, `"logits"` or `None` for an output's layer."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax" if layer.axis == -1 else None
    if isinstance(layer, (keras.layers.Dense, keras.layers.Activation)):
        return _HEAD_KINDS.get(layer.activation)
    return None


def _unique(name, taken):
    candidate, suffix = name, 0
    while candidate in taken:
        suffix += 1
        candidate = f"{name}_{suffix}"
    taken.add(candidate)
    return candidate


def _served_outputs(model):
    """The signature's outputs, in the order of `model.outputs`."""
    tensors = model.outputs
    # Dict outputs are named by their keys, the others by the layer that
    # makes them, as `model.output_names` does.
    # A Sequential model has `outputs` but no `output` until it is called.
    structure = (
        model.output
        if isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
        else tensors
    )
    paths = [path for path, _ in keras.tree.flatten_with_path(structure)]
    names = [
        "_".join(key for key in path if isinstance(key, str))
        or tensor._keras_history.operation.name
        for path, tensor in zip(paths, tensors, strict=True)
    ]
    kinds = [_head_kind(_producer(tensor)) for tensor in tensors]
    if len(tensors) == 1:
        names = [_SINGLE_OUTPUT_NAMES[kinds[0]]]
    else:
        # Next to other outputs, a linear layer may be a regression.
        kinds = [None if kind == "logits" else kind for kind in kinds]
    taken = set()
    names = [_unique(name, taken) for name in names]
    served = []
    for name, kind, tensor in zip(names, kinds, tensors, strict=True):
        decision = None
        if kind is not None:
            multi_label = kind == "sigmoid" and tensor.shape[-1] != 1
            decision = "labels" if multi_label else "class_ids"
            if len(tensors) > 1:
                decision = f"{name}_{decision}"
            decision = _unique(decision, taken)
        served.append(_ServedOutput(name, kind, decision))
    return served


def _decide(kind, values, threshold):
    """The int64 class decision for `values` from a head of `kind`."""
    import tensorflow as tf

    if kind == "softmax" or (kind == "logits" and values.shape[-1] != 1):
        return tf.argmax(values, axis=-1)
    # sigmoid(logit) >= threshold exactly when logit >= log(t / (1 - t)).
    cut = threshold if kind == "sigmoid" else math.log(threshold / (1 - threshold))
    decisions = tf.cast(values >= cut, tf.int64)
    return decisions[..., 0] if values.shape[-1] == 1 else decisions


def client_dtypes(model):
    """The extra dtypes clients send for the model's input, by signature name.

    Raw pixels often arrive as uint8, and `np.array` of JSON integers is
    int64: an image model (a float input) also takes uint8 images, and a
    token model (an integer input, or one that feeds an `Embedding`) also
    takes int64 ids. Each extra signature casts to the model's input dtype.

    Args:
        model: a `keras.Model` with one input.

    Returns:
        dict mapping signature names to dtype names, such as
        `{"serving_uint8": "uint8"}`.
    """
    dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
    if "int" in dtype or input_embedding(model) is not None:
        return {} if dtype == "int64" else {"serving_int64": "int64"}
    return {"serving_uint8": "uint8"}


def _serving_function(model, jit_compile, threshold, dtype=None):
    import tensorflow as tf

    images = model.inputs[0]
    spec = tf.TensorSpec(images.shape, dtype or images.dtype, name="images")
    served = _served_outputs(model)

    @tf.function(input_signature=[spec], jit_compile=jit_compile, autograph=False)
    def serve(images):
        images = tf.cast(images, model.inputs[0].dtype)
        values = keras.tree.flatten(model(images, training=False))
        outputs = {}
        for output, value in zip(served, values, strict=True):
            outputs[output.name] = value
            if output.decision is not None:
                outputs[output.decision] = _decide(output.kind, value, threshold)
        return outputs

    serve.get_concrete_function()
    return serve


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a `keras.Model`. Received: model={model!r}")
    # An unbuilt Sequential or a subclassed model has no symbolic inputs.
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            "`model` must have a known input, such as a Functional model or a "
            "Sequential model that starts with `keras.Input`. "
            f"Received: model={model!r}"
        )
    if len(inputs) != 1:
        names = [tensor.name for tensor in inputs]
        raise ValueError(
            "`model` must take one input, a batch of images. "
            f"Received: a model with {len(inputs)} inputs {names}"
        )


def _check_arguments(version, threshold):
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 0
    ):
        raise ValueError(
            f"`version` must be None or an integer >= 0. Received: version={version!r}"
        )
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not 0 < threshold < 1
    ):
        raise ValueError(
            f"`threshold` must be a number in (0, 1). Received: threshold={threshold!r}"
        )


def _next_version(export_dir):
    versions = [int(entry) for entry in os.listdir(export_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(
    model, export_dir, version=None, jit_compile=False, threshold=0.5
):
    """Exports a classifier as a SavedModel in TF Serving's layout.

    Writes `export_dir/<version>/`, the layout `tensorflow_model_server
    --model_base_path=export_dir` watches. Its `serving_default` signature
    takes `images`, a batch of raw images (0-255) of the model's input shape
    and dtype (float32 for the builders' models). The SavedModel holds only
    TensorFlow graphs and variables: it runs in TF Serving or
    `tf.saved_model.load` without Keras or keras-globalpool. It is written
    to a temporary folder first and renamed, so a server polling
    `export_dir` never sees a half-written version.

    The signature's outputs depend on the layer that makes each model
    output: a `Dense` or `Activation` layer with a softmax, sigmoid or
    linear activation (or a `Softmax` layer) is a classifier head. A model
    with one output, of shape `(batch, classes)`, returns:

    - softmax: `probabilities` and `class_ids`, their int64 argmax, of
      shape `(batch,)`;
    - sigmoid, one column: `probabilities` and `class_ids`,
      `probabilities >= threshold` as int64 of shape `(batch,)`;
    - sigmoid, several columns (multi-label): `probabilities` and `labels`,
      one int64 0/1 decision per label, `probabilities >= threshold`, of
      shape `(batch, classes)`;
    - linear (logits), one column: `logits` and `class_ids`,
      `sigmoid(logits) >= threshold` as int64 of shape `(batch,)`;
    - linear, several columns: `logits` and `class_ids`, their argmax (as
      for softmax: a multi-label head should use sigmoid);
    - any other layer: `outputs` alone.

    A model with several outputs returns each under its key when the model
    outputs a dict, else under the name of the layer that makes it (that
    of a nested model as a whole), made unique with `_1`, `_2`, ...; a
    softmax or sigmoid output `name` adds `name_class_ids` or `name_labels`
    as above. There a linear output may be a regression, so it gets no
    decision.

    The serving function is not compiled with XLA by default: an
    XLA-must-compile function fails in a TF Serving build without XLA
    support. `jit_compile=True` opts in; run the server with
    `--xla_cpu_compilation_enabled=true` on CPU.

    Args:
        model: a `keras.Model` with one input on the TensorFlow backend,
            such as one from `kgp.build_classifier`.
        export_dir: string or path. The model's base folder, created if
            missing.
        version: optional int >= 0. The version folder to write. Defaults to
            `None`: one more than the largest existing version, or 1.
        jit_compile: bool. Compile the serving function with XLA. Defaults
            to `False`.
        threshold: float in (0, 1). The probability at or above which a
            sigmoid or single-logit head decides 1. Defaults to `0.5`.

    Returns:
        The path of the version folder, as a string.

    Example:

    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 5, input_shape=(96, 96, 3), weights=None)
    >>> path = kgp.export_saved_model(model, "saved_models/flowers")
    >>> os.path.basename(path)
    '1'
    >>> import tensorflow as tf
    >>> serve = tf.saved_model.load(path).signatures["serving_default"]
    >>> outputs = serve(images=tf.zeros((2, 96, 96, 3)))
    >>> {name: tuple(value.shape) for name, value in sorted(outputs.items())}
    {'class_ids': (2,), 'probabilities': (2, 5)}
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "`export_saved_model` needs the TensorFlow backend. "
            f"Received: backend={keras.backend.backend()!r}"
        )
    _check_model(model)
    _check_arguments(version, threshold)
    serve = _serving_function(model, jit_compile, float(threshold))

    export_dir = os.fspath(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    if version is None:
        version = _next_version(export_dir)
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"Version {version} already exists: {path}")

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    for name, dtype in client_dtypes(model).items():
        archive.add_endpoint(
            name, _serving_function(model, jit_compile, float(threshold), dtype)
        )
    # TF Serving ignores folders whose name is not a number.
    staging = os.path.join(export_dir, f"tmp-{version}-{uuid.uuid4().hex}")
    archive.write_out(staging, verbose=False)
    os.rename(staging, path)
    return path
