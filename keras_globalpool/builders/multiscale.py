"""`build_multiscale_classifier`: pool several backbone stages, then classify."""

from keras_globalpool.builders.classifier import build_classifier


def build_multiscale_classifier(
    backbone, num_classes, *, stages="auto", name="multiscale_classifier", **kwargs
):
    """Builds a classifier on pooled features from several backbone stages.

    The multi-scale pattern: early stages see small details, late ones see
    whole objects. Each stage's feature map gets its own pooling layer,
    `pooler_1`, `pooler_2`, ..., the pooled vectors are concatenated by the
    layer `pooled_features`, and the head is the one of `build_classifier`.
    The `backbone` sub-model returns one feature map per stage; everything
    else, frozen BatchNorm and the float32 output included, is as in
    `build_classifier`, which this calls with `stages`.

    Args:
        backbone: string or `keras.Model`. A `keras.applications` model name
            (see `kgp.BACKBONES`) or a model, as in `build_classifier`.
        num_classes: int >= 1. The number of classes.
        stages: `"auto"` or a list of names of backbone layers whose outputs
            are pooled, in order. `"auto"` picks the registry's stages at
            strides 8 and 16 followed by the backbone's output (for
            `"ResNet50"`: `conv3_block4_out`, `conv4_block6_out` and
            `conv5_block3_out`); a model needs a list. `None` is taken as
            `"auto"`. Defaults to `"auto"`.
        name: string. Defaults to `"multiscale_classifier"`.
        **kwargs: the other keyword arguments of `build_classifier`, with
            its defaults: `input_shape`, `pooling` (a fresh layer is made for
            every stage), `weights`, `freeze_backbone`, `freeze_batch_norm`,
            `dropout`, `hidden_units`, `activation`, `hidden_activation`,
            `hidden_dropout` and `preprocessing`.

    Returns:
        A `keras.Model` from images to class probabilities, not compiled.

    Example:

    >>> model = kgp.build_multiscale_classifier(
    ...     "MobileNetV2", 5, input_shape=(64, 64, 3), weights=None)
    >>> model.get_layer("pooled_features").output.shape
    (None, 2048)
    """
    stages = "auto" if stages is None else stages
    return build_classifier(backbone, num_classes, stages=stages, name=name, **kwargs)
