"""`build_feature_extractor`: image embeddings for retrieval."""

import keras

from keras_globalpool.builders.backbone_features import (
    DEFAULT_WEIGHTS,
    backbone_features,
)
from keras_globalpool.builders.head import make_pooler
from keras_globalpool.pooler import POOLER_NAME


def build_feature_extractor(
    backbone,
    *,
    input_shape=(224, 224, 3),
    pooling="gem",
    weights=DEFAULT_WEIGHTS,
    normalize=True,
    freeze_backbone=True,
    freeze_batch_norm=True,
    preprocessing=None,
    name="feature_extractor",
):
    """Builds an embedding model: a backbone and a global pooling.

    For image retrieval, the standard recipe is GeM pooling on a pretrained
    backbone with L2-normalized outputs, so the dot product of two
    embeddings is their cosine similarity. The model runs the layers
    `preprocessing`, `backbone` and `pooler`, then `embeddings`: a
    `keras.layers.UnitNormalization` when `normalize`, else an identity.
    `embeddings` computes in float32, so the output stays float32 under
    mixed precision.

    Args:
        backbone: string or `keras.Model`. A `keras.applications` model name
            (see `kgp.BACKBONES`) or a model, as in `build_classifier`.
        input_shape: tuple of 3 ints; with a name, 1 channel (grayscale,
            repeated to RGB) or 3. Defaults to `(224, 224, 3)`.
        pooling: a `kgp.get` identifier or `"flatten"`. Defaults to `"gem"`.
        weights: `None`, `"imagenet"` or the path of a weights file; leave
            it out (or `None`) for a model. Defaults to `"imagenet"`.
        normalize: bool. L2-normalize the embeddings. Defaults to `True`.
        freeze_backbone: bool. Defaults to `True`.
        freeze_batch_norm: bool. Keep every backbone BatchNorm in inference
            mode, its moving statistics fixed even after unfreezing, as
            fine-tuning a pretrained backbone needs. Set it to `False` to
            train a backbone from scratch. Defaults to `True`.
        preprocessing: optional string, a `kgp.BackbonePreprocessing` mode.
            Defaults to the backbone's own.
        name: string. Defaults to `"feature_extractor"`.

    Returns:
        A `keras.Model` from images to embeddings of shape
        `(batch, channels)` (twice the channels for `"mixed"` pooling).

    Example:

    >>> model = kgp.build_feature_extractor(
    ...     "MobileNetV2", input_shape=(64, 64, 3), weights=None)
    >>> model.predict(np.zeros((2, 64, 64, 3)), verbose=0).shape
    (2, 1280)
    """
    pooler = make_pooler(pooling, name=POOLER_NAME)
    images, features = backbone_features(
        backbone, input_shape, weights, preprocessing, freeze_batch_norm
    )
    normalization = (
        keras.layers.UnitNormalization if normalize else keras.layers.Identity
    )
    embeddings = normalization(dtype="float32", name="embeddings")
    model = keras.Model(images, embeddings(pooler(features)), name=name)
    model.get_layer("backbone").trainable = not freeze_backbone
    return model
