"""The builders on what users hand them beyond plain RGB keras.applications.

Nested blocks and their BatchNorm, grayscale and other channel counts, user
backbones that Keras cannot clone from their config (Lambda, custom layers,
subclassed models), layers that do not pool, weights given with a model, and
channels_first where the backend cannot run it.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_globalpool as kgp
from keras_globalpool.backend_support import channels_first_convolutions_supported

RNG = np.random.default_rng(0)


def _images(size, channels=3, batch=2):
    return RNG.uniform(0, 255, (batch, size, size, channels)).astype("float32")


def _batch_norm_variables(model):
    return [
        variable
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
        for variable in layer.weights
    ]


# === unfreeze_backbone walks nested blocks ===


def _block(kind):
    """A conv + BatchNorm block, as a nested Functional or Sequential model."""
    conv = keras.layers.Conv2D(4, 3, padding="same", name="block_conv")
    bn = keras.layers.BatchNormalization(name="block_bn")
    if kind == "sequential":
        return keras.Sequential([keras.Input((8, 8, 4)), conv, bn], name="block")
    inputs = keras.Input((8, 8, 4))
    return keras.Model(inputs, bn(conv(inputs)), name="block")


def _nested_backbone(kind):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(inputs)
    x = _block(kind)(x)
    x = keras.layers.Conv2D(6, 1, name="top")(keras.layers.ReLU()(x))
    return keras.Model(inputs, x, name="nested")


class TestUnfreezeNestedBlocks:
    @pytest.mark.parametrize("kind", ["functional", "sequential"])
    def test_no_batch_norm_weight_becomes_trainable(self, kind):
        model = kgp.build_classifier(
            _nested_backbone(kind), 2, input_shape=(16, 16, 3), dropout=0.0
        )
        block = model.get_layer("backbone").get_layer("block")
        assert isinstance(block.get_layer("block_bn"), kgp.FrozenBatchNormalization)

        unfrozen = kgp.unfreeze_backbone(model)
        assert [layer.name for layer in unfrozen] == ["stem", "block_conv", "top"]
        trainable = {id(w) for w in model.trainable_weights}
        batch_norm = _batch_norm_variables(model)
        assert len(batch_norm) == 4  # gamma, beta, moving mean and variance
        assert trainable.isdisjoint(id(w) for w in batch_norm)
        convolutions = [w for layer in unfrozen for w in layer.weights]
        assert {id(w) for w in convolutions} <= trainable

        # What fit does is the reference: BatchNorm keeps every variable.
        before = [w.numpy().copy() for w in batch_norm + convolutions]
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        model.fit(_images(16, batch=4), np.array([0, 1, 1, 0]), verbose=0)
        after = [w.numpy() for w in batch_norm + convolutions]
        for old, new in zip(before[:4], after[:4], strict=True):
            np.testing.assert_array_equal(old, new)
        assert all(
            not np.array_equal(old, new)
            for old, new in zip(before[4:], after[4:], strict=True)
        )

    def test_num_layers_counts_the_weighted_leaves_in_order(self):
        model = kgp.build_classifier(
            _nested_backbone("functional"), 2, input_shape=(16, 16, 3)
        )
        # The leaves are stem, block_conv, block_bn, top: the top three
        # include the BatchNorm, which counts and stays frozen.
        unfrozen = kgp.unfreeze_backbone(model, num_layers=3)
        assert [layer.name for layer in unfrozen] == ["block_conv", "top"]
        backbone = model.get_layer("backbone")
        expected = {id(w) for layer in unfrozen for w in layer.weights}
        assert {id(w) for w in backbone.trainable_weights} == expected

    def test_batch_norm_inside_a_custom_layer_stays_frozen(self):
        model = kgp.build_classifier(
            _custom_block_backbone(), 2, input_shape=(8, 8, 3), freeze_batch_norm=False
        )
        (unfrozen,) = kgp.unfreeze_backbone(model)
        assert unfrozen.name == "conv_bn"
        trainable = {id(w) for w in model.get_layer("backbone").trainable_weights}
        assert trainable == {id(unfrozen.conv.kernel), id(unfrozen.conv.bias)}


class ConvBatchNorm(keras.layers.Layer):
    """A custom layer that holds a BatchNorm, which no clone can replace."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")
        self.bn = keras.layers.BatchNormalization()

    def call(self, inputs, training=None):
        return self.bn(self.conv(inputs), training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def _custom_block_backbone():
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, ConvBatchNorm(4, name="conv_bn")(inputs))


# === Grayscale and other channel counts ===


class TestChannels:
    @pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "EfficientNetB0"])
    def test_grayscale_equals_the_image_repeated_to_rgb(self, name, tmp_path):
        gray = kgp.build_classifier(name, 3, input_shape=(32, 32, 1), weights=None)
        assert gray.input_shape == (None, 32, 32, 1)
        assert gray.get_layer("backbone").input_shape == (None, 32, 32, 3)
        rgb = kgp.build_classifier(name, 3, input_shape=(32, 32, 3), weights=None)
        rgb.set_weights(gray.get_weights())
        x = _images(32, channels=1)
        expected = rgb.predict(np.repeat(x, 3, axis=-1), verbose=0)
        got = gray.predict(x, verbose=0)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

        path = tmp_path / "gray.keras"
        gray.save(path)
        loaded = keras.models.load_model(path, safe_mode=True)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), got, rtol=1e-6)

    @pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="SavedModel export needs the TensorFlow backend",
    )
    def test_grayscale_export_serves_one_channel(self, tmp_path):
        import tensorflow as tf

        model = kgp.build_multiscale_classifier(
            "MobileNetV2", 3, input_shape=(32, 32, 1), weights=None
        )
        x = _images(32, channels=1)
        path = kgp.export_saved_model(model, tmp_path / "gray")
        serve = tf.saved_model.load(path).signatures["serving_default"]
        served = serve(images=tf.constant(x))["probabilities"].numpy()
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-7)

    @pytest.mark.parametrize("channels", [2, 4, None])
    def test_other_channel_counts_are_refused(self, channels):
        with pytest.raises(ValueError, match=r"3 channels .* or 1 .*Received"):
            kgp.build_classifier(
                "ResNet50", 3, input_shape=(32, 32, channels), weights=None
            )

    @pytest.mark.parametrize("mode", ["caffe", "torch"])
    def test_rgb_preprocessing_refuses_one_channel(self, mode):
        inputs = keras.Input((8, 8, 1))
        backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
        with pytest.raises(ValueError, match=f"mode='{mode}'.*3 channels"):
            kgp.build_classifier(backbone, 2, input_shape=(8, 8, 1), preprocessing=mode)

    def test_one_channel_model_keeps_one_channel(self):
        # A user's model gets the images as they are, with "tf" scaling too.
        inputs = keras.Input((8, 8, 1))
        backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
        model = kgp.build_feature_extractor(
            backbone,
            input_shape=(8, 8, 1),
            pooling="avg",
            normalize=False,
            preprocessing="tf",
        )
        x = _images(8, channels=1)
        expected = np.mean(backbone(x / 127.5 - 1.0), axis=(1, 2))
        np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)


# === User backbones Keras cannot clone from their config ===


class NoKwargsScale(keras.layers.Layer):
    """A custom layer without `**kwargs`, so `from_config` fails."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def call(self, inputs):
        return inputs * self.scale


class SubclassedBackbone(keras.Model):
    def __init__(self, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3)
        self.bn = keras.layers.BatchNormalization() if batch_norm else None

    def call(self, inputs, training=None):
        x = self.conv(inputs)
        return x if self.bn is None else self.bn(x, training=training)


def _with_layer(layer):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, layer(x))


def _avg_features(backbone, **kwargs):
    return kgp.build_feature_extractor(
        backbone, input_shape=(8, 8, 3), pooling="avg", normalize=False, **kwargs
    )


class TestUserBackbones:
    @pytest.mark.parametrize(
        "layer",
        [
            keras.layers.Lambda(lambda t: 2.0 * t + 1.0, name="affine"),
            NoKwargsScale(3.0),
        ],
        ids=["lambda", "no_kwargs"],
    )
    def test_layers_without_a_usable_config(self, layer):
        backbone = _with_layer(layer)
        model = _avg_features(backbone)
        clone = model.get_layer("backbone")
        assert isinstance(clone.get_layer("bn"), kgp.FrozenBatchNormalization)
        x = _images(8)
        expected = np.mean(backbone(x, training=False), axis=(1, 2))
        np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-5)
        assert type(backbone.get_layer("bn")) is keras.layers.BatchNormalization

    def test_subclassed_model_without_frozen_batch_norm(self):
        backbone = SubclassedBackbone()
        x = _images(8)
        expected = np.mean(backbone(x, training=False), axis=(1, 2))
        model = _avg_features(backbone, freeze_batch_norm=False)
        np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-5)
        assert model.get_layer("backbone").trainable is False

    def test_subclassed_model_without_batch_norm_needs_no_flag(self):
        backbone = SubclassedBackbone(batch_norm=False)
        x = _images(8)
        model = _avg_features(backbone)
        expected = np.mean(backbone(x), axis=(1, 2))
        np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize(
        "backbone",
        [lambda: SubclassedBackbone(), _custom_block_backbone],
        ids=["subclassed", "custom_layer"],
    )
    def test_batch_norm_that_cannot_be_frozen_is_refused(self, backbone):
        with pytest.raises(ValueError, match="freeze_batch_norm=False"):
            _avg_features(backbone())


# === The pooler must pool ===


def _map_backbone():
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, name="features")(inputs))


class TestPoolingMustPool:
    @pytest.mark.parametrize(
        "pooling",
        [
            lambda: keras.layers.Dense(5),
            lambda: keras.layers.ReLU(),
            lambda: keras.saving.serialize_keras_object(keras.layers.Dense(5)),
            lambda: kgp.GlobalAveragePooling(keepdims=True),
            lambda: keras.layers.GlobalMaxPooling2D(keepdims=True),
            lambda: keras.layers.GlobalAveragePooling1D(),
        ],
        ids=["dense", "relu", "dense_dict", "keepdims", "keras_keepdims", "1d"],
    )
    def test_non_pooling_layers_are_refused(self, pooling):
        with pytest.raises(
            ValueError, match=r"GlobalAveragePooling2D.*Received: pooling="
        ):
            kgp.build_classifier(
                _map_backbone(), 2, input_shape=(8, 8, 3), pooling=pooling()
            )

    @pytest.mark.parametrize(
        "pooling, reference",
        [
            (keras.layers.GlobalAveragePooling2D, lambda f: f.mean(axis=(1, 2))),
            (keras.layers.GlobalMaxPooling2D, lambda f: f.max(axis=(1, 2))),
            (keras.layers.Flatten, lambda f: f.reshape(len(f), -1)),
        ],
    )
    def test_keras_poolings_are_accepted(self, pooling, reference):
        backbone = _map_backbone()
        model = kgp.build_feature_extractor(
            backbone, input_shape=(8, 8, 3), pooling=pooling(), normalize=False
        )
        x = _images(8)
        expected = reference(np.asarray(backbone(x), dtype="float64"))
        np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-5)


# === weights= with a model ===


BUILDERS = {
    "classifier": lambda **kw: kgp.build_classifier(_map_backbone(), 2, **kw),
    "multiscale": lambda **kw: kgp.build_multiscale_classifier(
        _map_backbone(), 2, stages=["features"], **kw
    ),
    "feature_extractor": lambda **kw: kgp.build_feature_extractor(
        _map_backbone(), **kw
    ),
}


class TestWeightsWithModel:
    @pytest.mark.parametrize("builder", sorted(BUILDERS))
    @pytest.mark.parametrize("weights", ["imagenet", "/path/to/file.weights.h5"])
    def test_weights_with_a_model_are_refused(self, builder, weights):
        with pytest.raises(ValueError, match=r"`weights`.*Received: weights="):
            BUILDERS[builder](input_shape=(8, 8, 3), weights=weights)

    @pytest.mark.parametrize("builder", sorted(BUILDERS))
    def test_default_and_none_are_accepted(self, builder):
        for kwargs in ({}, {"weights": None}):
            model = BUILDERS[builder](input_shape=(8, 8, 3), **kwargs)
            assert model.output.shape[0] is None

    @pytest.mark.parametrize(
        "builder",
        [
            kgp.build_classifier,
            kgp.build_multiscale_classifier,
            kgp.build_feature_extractor,
        ],
    )
    def test_names_still_default_to_imagenet(self, builder, monkeypatch):
        received = []

        def constructor(**kwargs):
            received.append(kwargs["weights"])
            raise RuntimeError("stop before downloading")

        spec = kgp.BACKBONES["MobileNetV2"]
        monkeypatch.setitem(
            kgp.BACKBONES,
            "MobileNetV2",
            dataclasses.replace(spec, constructor=constructor),
        )
        args = (3,) if builder is not kgp.build_feature_extractor else ()
        with pytest.raises(RuntimeError, match="stop before downloading"):
            builder("MobileNetV2", *args, input_shape=(32, 32, 3))
        assert received == ["imagenet"]


# === channels_first where the backend cannot run it ===


def _conv_runs_channels_first():
    """The reference: whether a channels_first Conv2D layer predicts here."""
    model = keras.Sequential(
        [
            keras.Input((2, 5, 5)),
            keras.layers.Conv2D(3, 3, data_format="channels_first"),
        ]
    )
    try:
        model.predict(np.ones((1, 2, 5, 5), "float32"), verbose=0)
    except Exception:
        return False
    return True


def _channels_first_backbone():
    inputs = keras.Input((3, 8, 8))
    x = keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    x = keras.layers.BatchNormalization(axis=1, name="bn")(x)
    return keras.Model(inputs, x)


class TestChannelsFirst:
    def test_probe_agrees_with_a_real_convolution(self):
        assert channels_first_convolutions_supported() == _conv_runs_channels_first()

    def test_application_backbone_builds_or_says_why(self):
        keras.config.set_image_data_format("channels_first")
        build = lambda: kgp.build_classifier(  # noqa: E731
            "MobileNetV2", 3, input_shape=(1, 32, 32), weights=None
        )
        if not channels_first_convolutions_supported():
            with pytest.raises(ValueError, match="channels_first.*channels_last"):
                build()
            return
        model = build()
        rgb = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(3, 32, 32), weights=None
        )
        rgb.set_weights(model.get_weights())
        x = RNG.uniform(0, 255, (2, 1, 32, 32)).astype("float32")
        np.testing.assert_allclose(
            model.predict(x, verbose=0),
            rgb.predict(np.repeat(x, 3, axis=1), verbose=0),
            rtol=1e-5,
            atol=1e-6,
        )

    def test_user_backbone_builds_or_says_why(self):
        keras.config.set_image_data_format("channels_first")
        backbone = _channels_first_backbone()
        build = lambda: kgp.build_feature_extractor(  # noqa: E731
            backbone, input_shape=(3, 8, 8), pooling="avg", normalize=False
        )
        if not channels_first_convolutions_supported():
            with pytest.raises(ValueError, match="channels_first convolutions"):
                build()
            return
        x = RNG.uniform(0, 255, (2, 3, 8, 8)).astype("float32")
        expected = np.mean(backbone(x, training=False), axis=(2, 3))
        np.testing.assert_allclose(build()(x), expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="TF_ENABLE_ONEDNN_OPTS concerns TensorFlow only",
    )
    @pytest.mark.parametrize("onednn", ["0", "1"])
    def test_consistent_with_and_without_onednn(self, onednn):
        script = textwrap.dedent(
            """
            import json
            import keras
            import numpy as np
            import keras_globalpool as kgp
            from keras_globalpool.backend_support import (
                channels_first_convolutions_supported)

            keras.config.set_image_data_format("channels_first")
            model = keras.Sequential([
                keras.Input((2, 5, 5)),
                keras.layers.Conv2D(3, 3, data_format="channels_first"),
            ])
            try:
                model.predict(np.ones((1, 2, 5, 5)), verbose=0)
                conv = True
            except Exception:
                conv = False
            try:
                built = kgp.build_classifier(
                    "ResNet50", 3, input_shape=(3, 32, 32), weights=None)
                shape = built.predict(np.zeros((2, 3, 32, 32)), verbose=0).shape
                error = None
            except ValueError as e:
                shape, error = None, str(e)
            print(json.dumps({
                "probe": channels_first_convolutions_supported(), "conv": conv,
                "shape": shape, "error": error,
            }))
            """
        )
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"TF_ENABLE_ONEDNN_OPTS={onednn}: {result}")
        assert result["probe"] == result["conv"]
        if result["probe"]:
            assert result["shape"] == [2, 3] and result["error"] is None
        else:
            assert result["shape"] is None
            assert "channels_first convolutions" in result["error"]
