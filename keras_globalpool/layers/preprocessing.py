"""`BackbonePreprocessing`: a backbone's own input preprocessing, as a layer."""

import keras
from keras import ops

from keras_globalpool.arguments import DATA_FORMATS, check_option

# ImageNet statistics used by `keras.applications.imagenet_utils`.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def _per_channel(values, channel_axis, rank, dtype):
    shape = [1] * rank
    shape[channel_axis] = len(values)
    return ops.reshape(ops.convert_to_tensor(values, dtype=dtype), shape)


def caffe_preprocess(x, channel_axis):
    """RGB to BGR, then subtract the ImageNet mean (ResNet, VGG)."""
    mean = _per_channel(_CAFFE_MEAN_BGR, channel_axis, len(x.shape), x.dtype)
    return ops.flip(x, axis=channel_axis) - mean


def tf_preprocess(x, channel_axis):
    """Scale to [-1, 1] (ResNetV2, MobileNet, Xception, Inception, NASNet)."""
    return x / 127.5 - 1.0


def torch_preprocess(x, channel_axis):
    """Scale to [0, 1], then standardize with ImageNet statistics (DenseNet)."""
    rank = len(x.shape)
    mean = _per_channel(_TORCH_MEAN, channel_axis, rank, x.dtype)
    std = _per_channel(_TORCH_STD, channel_axis, rank, x.dtype)
    return (x / 255.0 - mean) / std


def no_preprocess(x, channel_axis):
    """Pass-through, for backbones that preprocess inside the model."""
    return x


PREPROCESSING_MODES = {
    "caffe": caffe_preprocess,
    "tf": tf_preprocess,
    "torch": torch_preprocess,
    "none": no_preprocess,
}
# The modes with one statistic per RGB channel.
RGB_MODES = ("caffe", "torch")


@keras.saving.register_keras_serializable(package="keras_globalpool")
class BackbonePreprocessing(keras.layers.Layer):
    """Maps raw images (0-255) to what a `keras.applications` backbone expects.

    It is the serializable, in-model equivalent of the backbone module's
    `preprocess_input`, so a saved model takes raw pixels and loads with
    `safe_mode=True` (a `Lambda` layer would not). `"caffe"` flips RGB to BGR
    and subtracts the ImageNet mean (ResNet, VGG); `"tf"` scales to [-1, 1]
    (ResNetV2, MobileNet, MobileNetV2, Xception, Inception, NASNet);
    `"torch"` scales to [0, 1] and standardizes with the ImageNet mean and
    std (DenseNet); `"none"` passes the images through, for backbones that
    preprocess inside the model (EfficientNet, EfficientNetV2, ConvNeXt,
    MobileNetV3). Integer inputs such as uint8 are cast first.

    Args:
        mode: string, one of `"caffe"`, `"tf"`, `"torch"`, `"none"`.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Input shape:
        `(batch, height, width, 3)` with `"channels_last"`,
        `(batch, 3, height, width)` with `"channels_first"`; RGB order.
        `"tf"` and `"none"` take any number of channels.

    Output shape:
        The input shape.

    Example:

    >>> x = np.full((2, 32, 32, 3), 255, dtype="uint8")
    >>> y = kgp.BackbonePreprocessing("tf")(x)
    >>> tuple(y.shape), float(y[0, 0, 0, 0])
    ((2, 32, 32, 3), 1.0)
    """

    def __init__(self, mode, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format is None:
            data_format = keras.config.image_data_format()
        self.mode = check_option("mode", mode, tuple(PREPROCESSING_MODES))
        self.data_format = check_option("data_format", data_format, DATA_FORMATS)

    def build(self, input_shape):
        channels = input_shape[self._channel_axis()]
        if self.mode in RGB_MODES and channels not in (None, 3):
            raise ValueError(
                f"BackbonePreprocessing(mode={self.mode!r}) needs 3 channels, "
                'RGB, in its input; "tf" and "none" take any number. '
                f"Received: input_shape={tuple(input_shape)}"
            )

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        return PREPROCESSING_MODES[self.mode](x, self._channel_axis())

    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "data_format": self.data_format})
        return config
