"""`FrozenBatchNormalization`: BatchNorm that never switches to batch statistics."""

import keras


@keras.saving.register_keras_serializable(package="keras_globalpool")
class FrozenBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that always normalizes with its moving statistics.

    Fine-tuning a pretrained backbone on a small dataset goes wrong when its
    BatchNorm layers normalize with the statistics of each small batch and
    overwrite the ImageNet moving mean and variance. Keras keeps a
    BatchNorm layer in inference mode only while `trainable=False`;
    unfreezing a backbone with `backbone.trainable = True` flips that, and
    in a Functional model the outer `training=True` overrides a
    `base(x, training=False)` written at construction. This layer runs in
    inference mode whatever its `training` argument and its `trainable`
    flag: the moving statistics never change, while `gamma` and `beta`
    still train when the layer is trainable (as torchvision's
    `FrozenBatchNorm2d` but with trainable affine weights).

    Args:
        **kwargs: the arguments of `keras.layers.BatchNormalization`.

    Input shape:
        Arbitrary.

    Output shape:
        The input shape.

    Example:

    >>> bn = kgp.FrozenBatchNormalization()
    >>> x = np.random.rand(4, 3).astype("float32") * 10
    >>> y = bn(x, training=True)
    >>> float(bn.moving_mean.numpy().max())
    0.0
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)
