"""The pieces every builder shares: the pooler and the classification head."""

import keras

from keras_globalpool.arguments import check_positive_int, check_rate, is_positive_int
from keras_globalpool.layers import BaseGlobalPooling, ClassSpecificResidualAttention
from keras_globalpool.registry import POOLINGS, get

# The classic baseline the pooling heads replace, by name, next to the poolings.
POOLING_CHOICES = {**POOLINGS, "flatten": keras.layers.Flatten}
# The layers a head can take as a template, besides `kgp.BaseGlobalPooling`'s.
KERAS_POOLERS = (
    keras.layers.Flatten,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
)


def _check_pools(template, pooling):
    pools = isinstance(template, (BaseGlobalPooling, *KERAS_POOLERS))
    if not pools or getattr(template, "keepdims", False):
        raise ValueError(
            "`pooling` must turn a feature map into a vector: a kgp pooling "
            "layer (a `kgp.BaseGlobalPooling` subclass), "
            "keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D "
            "or keras.layers.Flatten, with keepdims=False. "
            f"Received: pooling={pooling!r}"
        )


def is_class_head(pooling):
    """Whether `pooling` names CSRA, which maps feature maps to class logits.

    Args:
        pooling: a `make_pooler` or `make_class_head` argument.

    Returns:
        bool.
    """
    if isinstance(pooling, str):
        return pooling == "csra"
    if isinstance(pooling, dict):
        return pooling.get("class_name") == ClassSpecificResidualAttention.__name__
    return isinstance(pooling, ClassSpecificResidualAttention)


def make_class_head(pooling, num_classes, dropout, name):
    """A new `kgp.ClassSpecificResidualAttention` called `name`, in float32.

    Args:
        pooling: `"csra"`, or a CSRA layer or its serialized dict as a
            template, whose other arguments (its own `dropout` included)
            the new layer keeps.
        num_classes: int. The classes; a template must have as many.
        dropout: float. The dropout on the feature map, for `"csra"`.
        name: string. The new layer's name.

    Returns:
        The layer. It computes in float32, so a mixed-precision model
        still outputs float32 logits.

    Example:

    >>> from keras_globalpool.builders.head import make_class_head
    >>> head = make_class_head("csra", 5, dropout=0.2, name="pooler")
    >>> head.num_classes, head.dropout, head.dtype_policy.name
    (5, 0.2, 'float32')
    """
    if isinstance(pooling, str):
        return ClassSpecificResidualAttention(
            num_classes, dropout=dropout, dtype="float32", name=name
        )
    config = get(pooling).get_config()
    if config["num_classes"] != num_classes:
        raise ValueError(
            f"`pooling` must have as many classes as the model: num_classes="
            f"{num_classes}. Received: pooling with num_classes="
            f"{config['num_classes']!r}"
        )
    return ClassSpecificResidualAttention.from_config(
        {**config, "dtype": "float32", "name": name}
    )


def make_pooler(pooling, name):
    """Returns a new pooling layer called `name`.

    Args:
        pooling: a name in `POOLING_CHOICES` (any `kgp.get` name, or
            `"flatten"`), a serialized layer dict, or a layer instance. A dict
            or an instance is a template: the layer returned is a fresh copy
            made from its config, so one template can pool several stages.
            It must be a `kgp.BaseGlobalPooling` subclass or one of
            `KERAS_POOLERS`, without `keepdims`.
        name: string. The new layer's name.

    Returns:
        A `keras.layers.Layer`.

    Example:

    >>> from keras_globalpool.builders.head import make_pooler
    >>> make_pooler(kgp.GlobalGeMPooling(p=4.0), name="pooler").p
    4.0
    """
    if is_class_head(pooling):
        raise ValueError(
            "`pooling` must pool a feature map into a vector: 'csra' maps it "
            "to class logits, and only `kgp.build_classifier` takes it, on "
            f"one feature map (stages=None). Received: pooling={pooling!r}"
        )
    if isinstance(pooling, (dict, keras.layers.Layer)):
        template = get(pooling)
        _check_pools(template, pooling)
    elif isinstance(pooling, str) and pooling in POOLING_CHOICES:
        template = POOLING_CHOICES[pooling]()
    else:
        names = ", ".join(repr(name) for name in POOLING_CHOICES)
        raise ValueError(
            f"`pooling` must be one of {{{names}}}, a serialized layer dict or "
            f"a layer instance. Received: pooling={pooling!r}"
        )
    return type(template).from_config({**template.get_config(), "name": name})


def check_head_arguments(num_classes, dropout, hidden_units, hidden_dropout):
    """Raises a Keras-style `ValueError` for a bad classification-head argument."""
    check_positive_int("num_classes", num_classes)
    check_rate("dropout", dropout)
    check_rate("hidden_dropout", hidden_dropout)
    if not isinstance(hidden_units, (list, tuple)) or not all(
        is_positive_int(units) for units in hidden_units
    ):
        raise ValueError(
            "`hidden_units` must be a sequence of integers >= 1. "
            f"Received: hidden_units={hidden_units!r}"
        )


def classification_head(
    pooled,
    num_classes,
    *,
    dropout,
    hidden_units,
    hidden_activation,
    hidden_dropout,
    activation,
):
    """Applies `dropout`, the hidden Dense layers and `predictions` to `pooled`.

    The hidden layers are `hidden_1`, `hidden_2`, ... each followed by the
    dropout layer `hidden_dropout_1`, ... . `predictions` computes in float32,
    so a mixed-precision model still outputs float32 probabilities.

    Returns:
        The output tensor.
    """
    x = keras.layers.Dropout(dropout, name="dropout")(pooled)
    for index, units in enumerate(hidden_units, start=1):
        x = keras.layers.Dense(
            units, activation=hidden_activation, name=f"hidden_{index}"
        )(x)
        x = keras.layers.Dropout(hidden_dropout, name=f"hidden_dropout_{index}")(x)
    return keras.layers.Dense(
        num_classes, activation=activation, dtype="float32", name="predictions"
    )(x)
