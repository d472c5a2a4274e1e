"""The pooler contract: `split_at_pooler` cuts a built model in two halves
that compose to the model, on every backend."""

import warnings

import keras
import numpy as np
import pytest

import keras_globalpool as kgp


def _classifier(pooling="attention"):
    backbone = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")]
    )
    return kgp.build_classifier(
        backbone, 3, input_shape=(8, 8, 3), pooling=pooling, hidden_units=(5,)
    )


def test_halves_compose_to_the_model_without_structure_warnings():
    model = _classifier()
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3))
    expected = keras.ops.convert_to_numpy(model(images))
    with warnings.catch_warnings():
        # Keras warns when a model built on a list of inputs gets one tensor.
        warnings.filterwarnings("error", message=".*structure of `inputs`")
        features, head = kgp.split_at_pooler(model)
        got = keras.ops.convert_to_numpy(head(features(images)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert features.output_shape == (None, 6, 6, 4)
    assert head.output_shape == (None, 3)


def test_a_model_without_a_pooler_is_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="layer named 'pooler'.*dense"):
        kgp.split_at_pooler(model)
