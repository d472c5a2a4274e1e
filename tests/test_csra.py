"""CSRA as a head: its arguments, its dropout, and the models the builders make.

The layer's values, gradients, masks and dtypes are checked with every other
pooling (`layer_cases.LAYER_CASES["csra"]`); its parity with the authors'
code is in test_parity_csra.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_cases import to_numpy

import keras_globalpool as kgp
from keras_globalpool import reference

SMALL = (16, 16, 3)


def tiny_backbone():
    inputs = keras.Input(SMALL)
    x = keras.layers.Conv2D(6, 3, strides=2, activation="relu", name="conv")(inputs)
    return keras.Model(inputs, x, name="tiny")


def csra_classifier(**kwargs):
    return kgp.build_classifier(
        tiny_backbone(), 4, input_shape=SMALL, pooling="csra", **kwargs
    )


class TestArguments:
    @pytest.mark.parametrize("num_heads", [0, 3, 5, 16, True, 4.0, "4", None])
    def test_num_heads_outside_the_papers_settings(self, num_heads):
        with pytest.raises(ValueError, match=r"`num_heads` must be one of \{1, 2"):
            kgp.ClassSpecificResidualAttention(3, num_heads=num_heads)

    @pytest.mark.parametrize("lam", [0, -0.1, float("inf"), float("nan"), "0.1"])
    def test_lam_must_be_positive_and_finite(self, lam):
        with pytest.raises(ValueError, match=r"`lam` must be a finite number > 0"):
            kgp.ClassSpecificResidualAttention(3, lam=lam)

    @pytest.mark.parametrize("num_classes", [0, -2, 2.5, True, None])
    def test_num_classes_must_be_a_positive_int(self, num_classes):
        with pytest.raises(ValueError, match=r"`num_classes` must be an integer"):
            kgp.ClassSpecificResidualAttention(num_classes)

    @pytest.mark.parametrize("dropout", [1.0, -0.1, 2])
    def test_dropout_must_be_a_rate(self, dropout):
        with pytest.raises(ValueError, match=r"`dropout` must be a number in"):
            kgp.ClassSpecificResidualAttention(3, dropout=dropout)

    def test_has_no_keepdims(self):
        with pytest.raises(ValueError, match="has no `keepdims`"):
            kgp.ClassSpecificResidualAttention(3, keepdims=False)

    def test_registry_needs_num_classes_and_takes_the_rest(self):
        layer = kgp.get("csra", num_classes=7, num_heads=8, lam=0.3)
        assert (layer.num_classes, layer.num_heads, layer.lam) == (7, 8, 0.3)
        assert layer.temperatures[-1] == float("inf")
        assert layer.temperatures[:-1] == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)


class TestDropout:
    def test_drops_features_in_training_only(self):
        keras.utils.set_random_seed(0)
        x = np.random.default_rng(0).normal(size=(4, 5, 5, 8)).astype("float32")
        layer = kgp.ClassSpecificResidualAttention(3, num_heads=2, dropout=0.5)
        plain = kgp.ClassSpecificResidualAttention(3, num_heads=2)
        plain.build(x.shape)
        layer.build(x.shape)
        plain.kernel.assign(layer.kernel)

        np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(plain(x)))
        trained = to_numpy(layer(x, training=True))
        assert not np.allclose(trained, to_numpy(plain(x)), atol=1e-3)
        # Dropout scales the kept features by 2: the logits of a map whose
        # features are all kept would double, and with half dropped they
        # stay of the same order.
        assert np.all(np.isfinite(trained))

    def test_dropout_round_trips_through_the_config(self):
        layer = kgp.ClassSpecificResidualAttention(3, dropout=0.25)
        restored = kgp.get(keras.saving.serialize_keras_object(layer))
        assert restored.dropout == 0.25 and restored.seed_generator is not None


class TestClassifier:
    def test_pooler_gives_logits_and_predictions_activates_them(self):
        keras.utils.set_random_seed(1)
        model = csra_classifier(activation="sigmoid", dropout=0.1)
        names = [layer.name for layer in model.layers]
        assert names[-2:] == ["pooler", "predictions"]
        pooler = model.get_layer("pooler")
        assert isinstance(pooler, kgp.ClassSpecificResidualAttention)
        assert (pooler.num_classes, pooler.dropout) == (4, 0.1)
        images = np.random.default_rng(1).uniform(0, 255, (3, *SMALL))

        probabilities = model.predict(images, verbose=0)

        features = to_numpy(model.get_layer("backbone")(images), "float64")
        logits = reference.csra(
            features,
            to_numpy(pooler.kernel, "float64"),
            pooler.temperatures,
            pooler.lam,
        )
        np.testing.assert_allclose(
            probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6
        )

    def test_mixed_precision_outputs_float32(self):
        keras.config.set_dtype_policy("mixed_float16")
        model = csra_classifier()
        assert model.get_layer("pooler").compute_dtype == "float32"
        out = model.predict(np.full((2, *SMALL), 255.0), verbose=0)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)

    def test_a_template_keeps_its_arguments(self):
        template = kgp.ClassSpecificResidualAttention(4, num_heads=6, lam=0.5)
        model = kgp.build_classifier(
            tiny_backbone(), 4, input_shape=SMALL, pooling=template
        )
        pooler = model.get_layer("pooler")
        assert pooler is not template
        assert (pooler.num_heads, pooler.lam) == (6, 0.5)

    def test_a_template_of_other_classes_is_refused(self):
        template = kgp.ClassSpecificResidualAttention(3)
        with pytest.raises(ValueError, match="num_classes=4.*num_classes=3"):
            kgp.build_classifier(
                tiny_backbone(), 4, input_shape=SMALL, pooling=template
            )

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"hidden_units": (8,)}, r"`hidden_units` must be \(\)"),
            ({"stages": ["conv"]}, "`stages` must be None"),
        ],
    )
    def test_refuses_what_has_no_place_after_logits(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            csra_classifier(**kwargs)

    @pytest.mark.parametrize(
        "build",
        [
            lambda: kgp.build_feature_extractor(
                tiny_backbone(), input_shape=SMALL, pooling="csra"
            ),
            lambda: kgp.build_multiscale_classifier(
                tiny_backbone(), 4, stages=["conv"], input_shape=SMALL, pooling="csra"
            ),
        ],
        ids=["feature_extractor", "multiscale"],
    )
    def test_other_builders_refuse_it(self, build):
        with pytest.raises(ValueError, match="pooling='csra'|'csra' maps it"):
            build()

    def test_fit_cached_trains_it_as_model_fit_does(self):
        images = np.random.default_rng(2).uniform(0, 255, (8, *SMALL))
        labels = np.arange(8) % 4
        models = []
        for _ in range(2):
            keras.utils.set_random_seed(3)
            model = csra_classifier(dropout=0.0)
            model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
            models.append(model)
        start = to_numpy(models[0].get_layer("pooler").kernel)
        models[0].fit(images, labels, batch_size=4, epochs=2, shuffle=False, verbose=0)
        kgp.fit_cached(
            models[1], images, labels, batch_size=4, epochs=2, shuffle=False, verbose=0
        )
        fitted, cached = (to_numpy(m.get_layer("pooler").kernel) for m in models)
        # The cache holds the maps in float16 (within 2**-11 of each value):
        # the two trainings agree to that, against the distance trained.
        trained = np.abs(fitted - start).max()
        assert trained > 0.01
        assert np.abs(cached - fitted).max() < 0.01 * trained

    def test_gradcam_explains_the_logits(self):
        keras.utils.set_random_seed(4)
        model = csra_classifier(activation="softmax")
        images = np.random.default_rng(4).uniform(0, 255, (3, *SMALL))

        maps = kgp.class_activation_maps(model, images, class_index=2)

        backbone, pooler = model.get_layer("backbone"), model.get_layer("pooler")
        features = tf.constant(backbone(model.get_layer("preprocessing")(images)))
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = pooler(features)[:, 2]  # before the softmax
        weights = tape.gradient(logits, features).numpy().mean(axis=(1, 2))
        cams = np.maximum(np.einsum("bhwc,bc->bhw", features.numpy(), weights), 0.0)
        expected = kgp.viz.heatmaps.normalize_heatmaps(
            kgp.viz.heatmaps.resize_heatmaps(cams, SMALL[:2])
        )
        np.testing.assert_allclose(maps, expected, atol=1e-5)
