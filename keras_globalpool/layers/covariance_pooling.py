"""`GlobalCovariancePooling`: iSQRT-COV second-order pooling."""

import keras
from keras import ops

from keras_globalpool import pool_ops
from keras_globalpool.arguments import check_positive_int
from keras_globalpool.layers.base_kernel_pooling import BaseKernelPooling


@keras.saving.register_keras_serializable(package="keras_globalpool")
class GlobalCovariancePooling(BaseKernelPooling):
    """Global covariance pooling (iSQRT-COV) for 1D, 2D and 3D feature maps.

    The second-order pooling of Li, Xie, Wang and Gao, "Towards Faster
    Training of Global Covariance Pooling Networks by Iterative Matrix
    Square Root Normalization" (CVPR 2018): the features are reduced to
    `dim` channels by a learned 1x1 projection and a ReLU; their covariance
    `C` over the valid positions (divided by their number) is divided by
    its trace, `iterations` Newton-Schulz steps take its matrix square
    root, and the root is multiplied by the square root of the trace. The
    output is the upper triangle of `sqrt(C)`, diagonal included, row by
    row: `dim * (dim + 1) / 2` values, which say how the channels vary
    together, not only how strongly each is present. Use it for
    fine-grained recognition (birds, cars, aircraft), where that matters;
    its cost grows with `dim**2`. Everything runs in float32 under mixed
    precision, and the value and gradient stay finite where `C` is
    singular: a sample with a single valid position, or constant features,
    gives zeros, as does a fully masked one.

    The authors reduce with a bias-free 1x1 convolution, a BatchNorm and a
    ReLU (to 256 channels, and take 5 steps). A pooling layer holds no
    BatchNorm: the projection here has a bias, which equals theirs at
    inference once the BatchNorm is folded into the kernel and bias. Their
    code returned `(3 I - A) / 2` for `iterations=1` while differentiating
    `A (3 I - A) / 2`; this layer computes the latter, as their fixed code
    does.

    Args:
        dim: int >= 1, or `None`. The channels to reduce to; `None` pools
            the input channels as they are, without weights. Defaults to
            `256`, the authors' size.
        iterations: int >= 1. The Newton-Schulz steps. Defaults to `5`.
        kernel_initializer: initializer of the projection's kernel.
            Defaults to `"glorot_uniform"`.
        bias_initializer: initializer of the projection's bias. Defaults
            to `"zeros"`.
        kernel_regularizer: optional regularizer of the kernel.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `keras.config.image_data_format()`.
        **kwargs: base layer arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: a tensor of rank 3, 4 or 5.
        mask: optional boolean tensor of shape `(batch, *spatial)`; masked
            positions are left out, and a fully masked sample gives zeros.

    Input shape:
        `(batch, *spatial, channels)` with `"channels_last"`,
        `(batch, channels, *spatial)` with `"channels_first"`.

    Output shape:
        `(batch, dim * (dim + 1) / 2)`, with `dim` the input channels when
        `dim=None`. There is no `keepdims`: the output is not one value per
        channel.

    Example:

    >>> x = np.random.rand(2, 7, 7, 64).astype("float32")
    >>> tuple(kgp.GlobalCovariancePooling(dim=16)(x).shape)
    (2, 136)
    >>> tuple(kgp.GlobalCovariancePooling(dim=None)(x[..., :8]).shape)
    (2, 36)
    """

    def __init__(
        self,
        dim=256,
        iterations=5,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        data_format=None,
        **kwargs,
    ):
        self._refuse_keepdims(kwargs, "not one value per channel")
        initializers = (kernel_initializer, bias_initializer, kernel_regularizer)
        super().__init__(*initializers, data_format, keepdims=False, **kwargs)
        self.dim = check_positive_int("dim", dim, allow_none=True)
        self.iterations = check_positive_int("iterations", iterations)
        if dim is None:
            self._build_without_weights()

    def build(self, input_shape):
        self._check_rank(input_shape)
        if self.dim is None:
            return  # no weights: built when created
        channels = self._known_channels(input_shape)
        self._set_input_spec(channels)
        # Not autocast: the projection runs in float32 under mixed precision.
        self.kernel = self._kernel("kernel", (channels, self.dim))
        self.bias = self._bias("bias", (self.dim,))

    def _pooled_dim(self, input_shape):
        """The side of the covariance matrix: `dim`, or the channels."""
        if self.dim is not None:
            return self.dim
        channels = self._channels(input_shape)
        if channels is None:
            raise ValueError(
                f"`{type(self).__name__}` with `dim=None` needs a known number "
                "of channels: its output has channels * (channels + 1) / 2 "
                f"values (data_format={self.data_format!r}). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        return channels

    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        dim = self._pooled_dim(input_shape)
        return (input_shape[0], dim * (dim + 1) // 2)

    def call(self, inputs, mask=None):
        x, mask, _ = self._prepare(inputs, mask)
        self._pooled_dim(x.shape)  # refuses unknown channels without `dim`
        channel_axis = self._channel_axis(len(x.shape))
        features = ops.moveaxis(x, channel_axis, -1)
        if mask is not None:
            mask = ops.moveaxis(mask, channel_axis, -1)
        if self.dim is not None:
            # `einsum` with explicit subscripts: see `GlobalAttentionPooling`.
            positions = "bxyz"[: len(features.shape) - 1]
            kernel = ops.cast(self.kernel, features.dtype)
            features = ops.einsum(
                f"{positions}c,cd->{positions}d", features, kernel
            ) + ops.cast(self.bias, features.dtype)
            features = ops.relu(features)
            if mask is not None:  # relu(bias) at masked positions
                features = ops.where(mask, features, 0.0)
        pooled = pool_ops.global_covariance_pool(features, self.iterations, mask)
        return self._finish(pooled)

    def get_config(self):
        config = super().get_config()
        del config["keepdims"]
        config.update(
            {
                "dim": self.dim,
                "iterations": self.iterations,
            }
        )
        return config
