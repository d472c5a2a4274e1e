"""What the Keras backend can run on this machine, probed once per process."""

import functools

import keras
import numpy as np


@functools.cache
def channels_first_convolutions_supported():
    """Whether the backend runs `channels_first` convolutions here.

    TensorFlow's CPU `Conv2D` kernel takes only channels_last (NHWC) unless
    TensorFlow runs with oneDNN (`TF_ENABLE_ONEDNN_OPTS=1`, the default on
    CPUs with AVX-512); on a GPU, both layouts run. JAX and PyTorch run
    both layouts on CPU. The answer comes from running one tiny
    `channels_first` convolution, the first time only.

    Returns:
        bool.

    Example:

    >>> from keras_globalpool.backend_support import (
    ...     channels_first_convolutions_supported)
    >>> isinstance(channels_first_convolutions_supported(), bool)
    True
    """
    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf

    try:
        keras.ops.conv(
            np.ones((1, 2, 3, 3), "float32"),
            np.ones((1, 1, 2, 2), "float32"),
            data_format="channels_first",
        )
    except tf.errors.OpError:
        return False
    return True


def check_channels_first_supported(context):
    """Raises a `ValueError` if `channels_first` convolutions cannot run here.

    Args:
        context: string. What needs them, the start of the message, such as
            `"backbone='ResNet50' under image_data_format='channels_first'"`.

    Raises:
        ValueError: where `channels_first_convolutions_supported()` is
            `False`, saying so and what to do instead.

    Example:

    >>> from keras_globalpool.backend_support import (
    ...     channels_first_convolutions_supported, check_channels_first_supported)
    >>> try:
    ...     check_channels_first_supported("My model")
    ...     raised = False
    ... except ValueError:
    ...     raised = True
    >>> raised == (not channels_first_convolutions_supported())
    True
    """
    if not channels_first_convolutions_supported():
        raise ValueError(
            f"{context} needs channels_first convolutions, which the TensorFlow "
            "backend cannot run on this machine: without a GPU or oneDNN, "
            "TensorFlow's CPU Conv2D takes only channels_last (NHWC) inputs. "
            "Use channels_last (`keras.config.set_image_data_format("
            "'channels_last')` and channels_last layers), run on a GPU, or use "
            "the JAX or PyTorch backend."
        )


# The layers TensorFlow's CPU kernels run in channels_last only; its depthwise
# and separable convolutions and its poolings run channels_first as well.
_CHANNELS_LAST_ONLY_ON_CPU = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
)


def channels_first_convolution(model):
    """The first convolution of `model` that computes in `channels_first`.

    Args:
        model: a `keras.Model` or layer; nested models and layers count.

    Returns:
        The layer, or `None` where there is none.

    Example:

    >>> from keras_globalpool.backend_support import channels_first_convolution
    >>> conv = keras.layers.Conv2D(2, 1, data_format="channels_first", name="c")
    >>> model = keras.Sequential([keras.Input((3, 4, 4)), conv])
    >>> channels_first_convolution(model).name
    'c'
    """
    for layer in model._flatten_layers():
        if (
            isinstance(layer, _CHANNELS_LAST_ONLY_ON_CPU)
            and layer.data_format == "channels_first"
        ):
            return layer
    return None
