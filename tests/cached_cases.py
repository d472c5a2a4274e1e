"""The small models of the cached-training tests."""

import keras


def random_features(filters=8, scale=1.0 / 255.0, seed=123):
    """A backbone of fixed random weights over 8x8 gray images: 8x8 maps.

    Args:
        filters: int. Channels of the maps. Defaults to `8`.
        scale: float. The `Rescaling` of the pixels. Defaults to `1 / 255`.
        seed: int. Seeds the weights. Defaults to `123`.

    Returns:
        A `keras.Sequential` named `"random_features"`.
    """
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(scale),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
        ],
        name="random_features",
    )


def compiled(model, metrics=("accuracy",)):
    """`model` compiled with Adam(1e-2) and sparse categorical cross-entropy."""
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="sparse_categorical_crossentropy",
        metrics=list(metrics),
    )
    return model
