"""`kgp.fit_cached`: training a head on cached feature maps, as `fit` would."""

import keras
import numpy as np
import pytest

import keras_globalpool as kgp
from keras_globalpool.cli import data


@pytest.fixture(scope="module")
def digits():
    return data.stratified_split(data.load_digits(), test_fraction=0.25)


def _frozen_backbone(scale=1.0 / 255.0):
    """A fixed random conv net: a stand-in for a pretrained backbone."""
    keras.utils.set_random_seed(123)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(scale),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        ],
        name="random_features",
    )


def _classifier(pooling="flatten", seed=0, scale=1.0 / 255.0):
    backbone = _frozen_backbone(scale)
    keras.utils.set_random_seed(seed)
    model = kgp.build_classifier(
        backbone, 10, input_shape=(8, 8, 1), pooling=pooling, dropout=0.1
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _accuracy(model, dataset):
    predicted = np.argmax(model.predict(dataset.x, verbose=0), axis=-1)
    return float(np.mean(predicted == dataset.y))


def test_same_accuracy_as_fit(digits):
    train, test = digits
    plain, cached = _classifier(), _classifier()
    plain.fit(train.x, train.y, epochs=8, batch_size=64, verbose=0)
    kgp.fit_cached(cached, train.x, train.y, epochs=8, batch_size=64, verbose=0)
    plain_accuracy, cached_accuracy = _accuracy(plain, test), _accuracy(cached, test)
    assert plain_accuracy > 0.85
    assert abs(plain_accuracy - cached_accuracy) <= 0.04


def test_trained_weights_are_in_the_full_model(digits):
    train, test = digits
    model = _classifier("attention")
    before = [w.copy() for w in model.get_layer("pooler").get_weights()]
    backbone_before = model.get_layer("backbone").get_weights()
    cached = kgp.cache_features(model, test.x)
    history = kgp.fit_cached(
        model, train.x, train.y, epochs=2, verbose=0, validation_data=(cached, test.y)
    )
    assert "val_accuracy" in history.history
    # The pooler trained (attention has weights), the frozen backbone did not.
    after = model.get_layer("pooler").get_weights()
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
    for b, a in zip(
        backbone_before, model.get_layer("backbone").get_weights(), strict=True
    ):
        np.testing.assert_array_equal(b, a)
    # The full model, from raw images, predicts what the head does from the cache.
    np.testing.assert_allclose(
        model.predict(test.x, verbose=0), kgp.predict_cached(model, cached), atol=2e-3
    )


def test_feature_maps_are_cached_before_pooling_in_float16(digits):
    model = _classifier("gem")
    cached = kgp.cache_features(model, digits[1].x[:10], batch_size=4)
    assert cached.maps.shape == (10, 8, 8, 32)
    assert cached.maps.dtype == np.float16


def test_float32_when_float16_would_overflow(digits):
    model = _classifier(scale=1e4)  # Features far above float16's 65504.
    cached = kgp.cache_features(model, digits[1].x[:10], batch_size=4)
    assert cached.maps.dtype == np.float32
    assert np.isfinite(cached.maps).all() and cached.maps.max() > 65504


def test_rejects_uncompiled_model(digits):
    model = kgp.build_classifier(_frozen_backbone(), 10, input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="must be compiled"):
        kgp.fit_cached(model, digits[0].x, digits[0].y)


def test_rejects_trainable_backbone(digits):
    model = _classifier()
    model.get_layer("backbone").trainable = True
    with pytest.raises(ValueError, match="must be frozen.*Received: 2 trainable"):
        kgp.fit_cached(model, digits[0].x, digits[0].y)


def test_rejects_model_without_pooler(digits):
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Flatten()(inputs))
    model.compile(loss="mse")
    with pytest.raises(ValueError, match="layer named 'pooler'"):
        kgp.fit_cached(model, digits[0].x, digits[0].y)
