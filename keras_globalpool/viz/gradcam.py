"""Grad-CAM: channels weighted by the class logit's mean gradient."""

import keras
import numpy as np
from keras import ops

from keras_globalpool.viz.pooling_graph import (
    image_feature_map,
    model_input,
    model_output,
)


def channels_last_array(features, data_format):
    """A feature tensor as a float32 NumPy array with channels last."""
    features = ops.convert_to_numpy(features).astype("float32")
    if data_format == "channels_first":
        return np.moveaxis(features, 1, -1)
    return features


def _logit_head(model):
    """The tensor to read class logits from, and the Dense that maps it.

    When the model ends in a Dense layer, its input and weights give the
    logits before softmax or sigmoid, whose gradients do not vanish on
    confident predictions; when it ends in an `Activation` layer (a CSRA
    head's `predictions`), its input is the logits. Otherwise the model's
    output is used as is.
    """
    last = model.layers[-1]
    output = model_output(model)
    if last.output is not output:
        return output, None
    if isinstance(last, keras.layers.Dense):
        return last.input, last
    if isinstance(last, keras.layers.Activation):
        return last.input, None
    return output, None


def gradcam_explainer(model, pool, data_format):
    """A function `(images, classes) -> raw Grad-CAMs` (Selvaraju et al.).

    Each channel of the feature map is weighted by the mean over positions
    of the gradient of the class logit, the weighted channels are summed,
    and the sum is rectified. The gradient comes from `tf.GradientTape`, so
    this needs the TensorFlow backend. `classes` of None explains each
    image's highest logit.
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Grad-CAM needs the TensorFlow backend. "
            f"Received: keras.backend.backend()={keras.backend.backend()!r}"
        )
    import tensorflow as tf

    head_input, dense = _logit_head(model)
    grad_model = keras.Model(model_input(model), [image_feature_map(pool), head_input])

    def logits_of(head):
        if dense is None:
            return ops.cast(head, "float32")
        logits = ops.matmul(
            ops.cast(head, "float32"), ops.cast(dense.kernel, "float32")
        )
        if dense.use_bias:
            logits = logits + ops.cast(dense.bias, "float32")
        return logits

    def explain(images, classes):
        with tf.GradientTape() as tape:
            features, head = grad_model(images, training=False)
            logits = logits_of(head)
            if classes is None:
                classes = np.argmax(ops.convert_to_numpy(logits), axis=-1)
            # Samples are independent at inference, so the gradient of the
            # sum is each sample's own gradient.
            target = ops.sum(tf.gather(logits, classes, axis=1, batch_dims=1))
        grads = channels_last_array(tape.gradient(target, features), data_format)
        features = channels_last_array(features, data_format)
        channel_weights = grads.mean(axis=(1, 2))
        cams = np.einsum("bhwc,bc->bhw", features, channel_weights)
        return np.maximum(cams, 0.0)

    return explain
