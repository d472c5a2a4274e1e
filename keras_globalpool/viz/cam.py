"""Class activation maps: CAM for GAP -> Dense heads, Grad-CAM for the rest."""

import keras
import numpy as np
from keras import ops

from keras_globalpool.arguments import check_option
from keras_globalpool.layers import GlobalAveragePooling
from keras_globalpool.pooler import POOLER_NAME, POOLING_TYPES, find_pooling_layer
from keras_globalpool.viz.gradcam import channels_last_array, gradcam_explainer
from keras_globalpool.viz.heatmaps import (
    image_batch,
    normalize_heatmaps,
    resize_heatmaps,
    spatial_size,
)
from keras_globalpool.viz.layout_errors import channels_first_cpu_errors
from keras_globalpool.viz.pooling_graph import (
    data_format_of,
    image_feature_map,
    model_input,
    model_output,
)

METHODS = ("auto", "cam", "gradcam")
METHOD_LABELS = {"cam": "CAM", "gradcam": "Grad-CAM"}
CAM_POOLINGS = (GlobalAveragePooling, keras.layers.GlobalAveragePooling2D)


def class_activation_maps(
    model, images, class_index=None, method="auto", layer_name=None, batch_size=32
):
    """Heatmaps of where a classifier found evidence for a class.

    With a head of global average pooling, optional `Dropout`, then the
    model's final `Dense` layer (`kgp.GlobalAveragePooling` or
    `keras.layers.GlobalAveragePooling2D`), this is the true Class
    Activation Map of Zhou et al. (2016): the feature maps summed with the
    class's Dense weights, `cam[i, j] = sum_c kernel[c, k] * f[i, j, c]`, so
    the class logit is the map's mean plus the bias. Any other head (max,
    mixed, GeM or attention pooling, hidden Dense layers, a flatten head)
    breaks that identity, and the map is Grad-CAM (Selvaraju et al., 2017):
    each channel weighted by the mean gradient of the class logit over its
    positions, then ReLU. Grad-CAM uses the logit, before the final Dense
    layer's softmax or sigmoid, and needs the TensorFlow backend.

    The feature map is the input of the model's pooling layer (the layer
    named `"pooler"`, else its only global-pooling layer, else its only
    `Flatten`), so models whose backbone is a nested sub-model work. Each
    map is resized bilinearly to the images' height and width (half-pixel
    centres), then scaled to [0, 1] by its own minimum and maximum; a
    constant map becomes zeros.

    Args:
        model: a functional or Sequential `keras.Model` with one image
            input and one output of shape `(batch, classes)`.
        images: array of shape `(batch, height, width, channels)`, or
            `(batch, channels, height, width)` when the pooling layer's
            `data_format` is `"channels_first"`, as the model takes them.
        class_index: `None` for each image's predicted class, an int for
            one class for all images, or an array of one int per image.
            Defaults to `None`.
        method: string, one of `"auto"`, `"cam"`, `"gradcam"`. `"auto"`
            uses CAM where the head allows it and Grad-CAM otherwise.
            Defaults to `"auto"`.
        layer_name: optional string. The layer whose input is the feature
            map to explain, when the model's pooling layer cannot be found
            by name or type.
        batch_size: int. Images per forward pass. Defaults to `32`.

    Returns:
        float32 NumPy array of shape `(batch, height, width)` in [0, 1].

    Raises:
        ValueError: if the model has channels_first convolutions that
            TensorFlow cannot run on this CPU (no oneDNN, no GPU).

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=4)])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(32, 32, 3))
    >>> images = np.random.rand(4, 32, 32, 3) * 255
    >>> maps = kgp.class_activation_maps(model, images)
    >>> maps.shape, float(maps.min()), float(maps.max())
    ((4, 32, 32), 0.0, 1.0)
    """
    images = image_batch(images)
    pool = explained_layer(model, layer_name)
    method = resolve_method(model, method, layer_name)
    data_format = data_format_of(pool)
    classes = _requested_classes(class_index, len(images), _num_classes(model))
    make_explainer = _cam_explainer if method == "cam" else gradcam_explainer
    explain = make_explainer(model, pool, data_format)
    maps = []
    with channels_first_cpu_errors(model):
        for start in range(0, len(images), batch_size):
            batch = slice(start, start + batch_size)
            wanted = None if classes is None else classes[batch]
            maps.append(explain(images[batch], wanted))
    maps = resize_heatmaps(np.concatenate(maps), spatial_size(images, data_format))
    return normalize_heatmaps(maps)


def resolve_method(model, method="auto", layer_name=None):
    """Which method `class_activation_maps` uses for `model`.

    Args:
        model: the `keras.Model` to explain.
        method: string, one of `"auto"`, `"cam"`, `"gradcam"`. Defaults to
            `"auto"`.
        layer_name: optional string, as in `class_activation_maps`.

    Returns:
        `"cam"` or `"gradcam"`.

    Example:

    >>> from keras_globalpool.viz.cam import resolve_method
    >>> backbone = keras.Sequential(
    ...     [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=4)])
    >>> gap_dense_model = kgp.build_classifier(backbone, 3, input_shape=(32, 32, 3))
    >>> resolve_method(gap_dense_model)
    'cam'
    >>> resolve_method(
    ...     kgp.build_classifier(backbone, 3, input_shape=(32, 32, 3), pooling="max"))
    'gradcam'
    """
    check_option("method", method, METHODS)
    pool = explained_layer(model, layer_name)
    dense = cam_dense_layer(model, pool)
    if method == "auto":
        return "gradcam" if dense is None else "cam"
    if method == "cam" and dense is None:
        raise ValueError(
            "`method='cam'` needs the model to end in global average pooling, "
            "optional Dropout, then Dense, where the class map is the "
            f"Dense-weighted sum of the feature maps. Model {model.name!r} "
            f"pools with {type(pool).__name__} {pool.name!r} and has another "
            "head. Use method='gradcam' or method='auto'."
        )
    return method


def explained_layer(model, layer_name=None):
    """The layer whose input is the feature map to explain.

    The pooling layer (see `find_pooling_layer`); in a fully connected
    head, which has no pooling, the only `Flatten` layer.
    """
    has_pooling = any(
        isinstance(layer, POOLING_TYPES) or layer.name == POOLER_NAME
        for layer in model.layers
    )
    if layer_name is None and not has_pooling:
        return find_pooling_layer(model, layer_types=(keras.layers.Flatten,))
    return find_pooling_layer(model, layer_name)


def cam_dense_layer(model, pool):
    """The Dense layer whose kernel makes the CAM, or None.

    The head must be `pool -> [Dropout ...] -> Dense`, a plain chain that
    ends the model: then, and only then, the class logit is linear in the
    pooled features and the CAM formula holds.
    """
    if not isinstance(pool, CAM_POOLINGS) or pool.keepdims:
        return None
    layers = model.layers
    head = layers[layers.index(pool) + 1 :]
    if not head or not isinstance(head[-1], keras.layers.Dense):
        return None
    if not all(isinstance(layer, keras.layers.Dropout) for layer in head[:-1]):
        return None
    previous = pool
    for layer in head:
        if layer.input is not previous.output:
            return None
        previous = layer
    return head[-1] if previous.output is model_output(model) else None


def _num_classes(model):
    output = model_output(model)
    if len(output.shape) != 2:
        raise ValueError(
            f"Model {model.name!r} must output class scores of shape "
            f"(batch, classes). Received: output shape={tuple(output.shape)}"
        )
    return output.shape[-1]


def _requested_classes(class_index, count, num_classes):
    """`class_index` as one int per image, or None for the predicted ones."""
    if class_index is None:
        return None
    classes = np.asarray(class_index)
    if classes.ndim == 0:
        classes = np.full((count,), classes)
    if (
        classes.shape != (count,)
        or not np.issubdtype(classes.dtype, np.integer)
        or classes.min() < 0
        or classes.max() >= num_classes
    ):
        raise ValueError(
            "`class_index` must be None, an int or one int per image, each in "
            f"[0, {num_classes}). Received: class_index={class_index!r}"
        )
    return classes


def _cam_explainer(model, pool, data_format):
    """A function `(images, classes) -> raw CAMs` at feature-map resolution."""
    kernel = ops.convert_to_numpy(cam_dense_layer(model, pool).kernel)
    kernel = kernel.astype("float32")
    feature_model = keras.Model(
        model_input(model), [image_feature_map(pool), model_output(model)]
    )

    def explain(images, classes):
        features, scores = feature_model(images, training=False)
        if classes is None:
            classes = np.argmax(ops.convert_to_numpy(scores), axis=-1)
        features = channels_last_array(features, data_format)
        return np.einsum("bhwc,cb->bhw", features, kernel[:, classes])

    return explain
