"""The transfer-learning builders: backbones, preprocessing, heads, fine-tuning."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_globalpool as kgp
from keras_globalpool.layers.preprocessing import PREPROCESSING_MODES

RNG = np.random.default_rng(0)


def _images(size, batch=2):
    return RNG.uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _tiny_backbone(size=16):
    """A two-stage conv net with BatchNorm, standing in for a real backbone."""
    inputs = keras.Input((size, size, 3))
    x = inputs
    for index, filters in enumerate((8, 16), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same")(x)
        x = keras.layers.BatchNormalization(name=f"block{index}_bn")(x)
        x = keras.layers.ReLU(name=f"block{index}")(x)
    return keras.Model(inputs, x, name="tiny")


def _batch_norms(model):
    return [
        layer
        for layer in model.get_layer("backbone").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _moving_stats(model):
    return [
        variable.numpy().copy()
        for layer in _batch_norms(model)
        for variable in (layer.moving_mean, layer.moving_variance)
    ]


class TestRegistry:
    def test_every_keras_application_is_registered(self):
        applications = {n for n in dir(keras.applications) if n[0].isupper()}
        assert set(kgp.BACKBONES) == applications
        for name, spec in kgp.BACKBONES.items():
            assert spec.constructor is getattr(keras.applications, name)
            assert spec.preprocessing in PREPROCESSING_MODES
            assert len(spec.stages) == 2

    @pytest.mark.parametrize("name", sorted(kgp.BACKBONES))
    def test_preprocessing_matches_keras_applications(self, name):
        spec = kgp.BACKBONES[name]
        module = sys.modules[spec.constructor.__module__]
        x = _images(8)
        expected = module.preprocess_input(x.copy())
        got = kgp.BackbonePreprocessing(spec.preprocessing)(x)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)

    @pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
    def test_preprocessing_channels_first(self, mode):
        keras.config.set_image_data_format("channels_first")
        x = RNG.uniform(0, 255, (2, 3, 5, 4)).astype("float32")
        expected = keras.applications.imagenet_utils.preprocess_input(
            x.copy(), data_format="channels_first", mode=mode
        )
        got = kgp.BackbonePreprocessing(mode)(x)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)

    def test_preprocessing_takes_uint8(self):
        x = RNG.integers(0, 256, (2, 4, 4, 3)).astype("uint8")
        layer = kgp.BackbonePreprocessing("caffe")
        np.testing.assert_array_equal(layer(x), layer(x.astype("float32")))

    @pytest.mark.slow
    @pytest.mark.parametrize("name", sorted(kgp.BACKBONES))
    def test_default_stages_are_at_strides_8_and_16(self, name):
        # The family test checks that the stages of each family's smallest
        # member exist; this checks every member, and the strides.
        size = 299  # Inception's valid padding shrinks 224 inputs more than /32
        model = kgp.BACKBONES[name].constructor(
            include_top=False, weights=None, input_shape=(size, size, 3)
        )
        heights = [
            model.get_layer(s).output.shape[1] for s in kgp.BACKBONES[name].stages
        ]
        heights.append(model.output.shape[1])
        for height, stride in zip(heights, (8, 16, 32), strict=True):
            assert abs(height - size / stride) <= 0.2 * size / stride, heights


# A cheap pooling per family; together they cover every pooling once or more.
FAMILY_CASES = [
    ("ResNet50", 32, "avg"),
    ("ResNet50V2", 32, "max"),
    ("VGG16", 32, "flatten"),
    ("DenseNet121", 32, "attention"),
    ("MobileNet", 32, "gem"),
    ("MobileNetV2", 32, "mixed"),
    ("MobileNetV3Small", 32, {"gem_dict": 4.0}),
    ("EfficientNetB0", 32, "learned_instance"),
    ("EfficientNetV2B0", 32, "avg"),
    ("ConvNeXtTiny", 32, "gem"),
    ("Xception", 71, "max"),
    ("InceptionV3", 75, "mixed"),
    ("InceptionResNetV2", 75, "attention"),
    ("NASNetMobile", 32, "avg"),
]


def _pooling(case):
    """Turns the case's pooling into a name, a serialized dict or a layer."""
    if isinstance(case, dict):
        return keras.saving.serialize_keras_object(kgp.GlobalGeMPooling(p=4.0))
    if case == "learned_instance":
        return kgp.GlobalMixedPooling(mode="learned", name="my_pool")
    return case


class TestBuildClassifier:
    @pytest.mark.parametrize("backbone, size, pooling", FAMILY_CASES)
    def test_every_family_builds_and_predicts(self, backbone, size, pooling):
        model = kgp.build_classifier(
            backbone,
            3,
            input_shape=(size, size, 3),
            pooling=_pooling(pooling),
            weights=None,
        )
        assert [layer.name for layer in model.layers] == [
            "images",
            "preprocessing",
            "backbone",
            "pooler",
            "dropout",
            "predictions",
        ]
        preprocessing = model.get_layer("preprocessing")
        assert preprocessing.mode == kgp.BACKBONES[backbone].preprocessing
        batch_norms = _batch_norms(model)
        assert all(isinstance(bn, kgp.FrozenBatchNormalization) for bn in batch_norms)
        for stage in kgp.BACKBONES[backbone].stages:  # multi-scale defaults exist
            model.get_layer("backbone").get_layer(stage)
        probabilities = np.asarray(model(_images(size), training=False))
        assert probabilities.shape == (2, 3)
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)

    def test_pooler_types(self):
        backbone = _tiny_backbone()
        for pooling, cls in [
            ("flatten", keras.layers.Flatten),
            ("gem", kgp.GlobalGeMPooling),
            (kgp.GlobalGeMPooling(p=5.0), kgp.GlobalGeMPooling),
        ]:
            model = kgp.build_classifier(
                backbone, 2, input_shape=(16, 16, 3), pooling=pooling
            )
            assert type(model.get_layer("pooler")) is cls
        assert model.get_layer("pooler").p == 5.0

    def test_medical_mlp_head(self):
        # A DenseNet121 + attention + MLP head, on a stand-in backbone.
        model = kgp.build_classifier(
            _tiny_backbone(),
            3,
            input_shape=(16, 16, 3),
            pooling="attention",
            dropout=0.5,
            hidden_units=(512,),
            hidden_dropout=0.3,
        )
        names = [layer.name for layer in model.layers]
        assert names[-5:] == [
            "pooler",
            "dropout",
            "hidden_1",
            "hidden_dropout_1",
            "predictions",
        ]
        assert model.get_layer("dropout").rate == 0.5
        assert model.get_layer("hidden_1").units == 512
        assert model.get_layer("hidden_dropout_1").rate == 0.3
        assert model.get_layer("preprocessing").mode == "none"

    def test_frozen_by_default_only_the_head_trains(self):
        model = kgp.build_classifier(
            "MobileNetV2", 4, input_shape=(32, 32, 3), pooling="attention", weights=None
        )
        head = model.get_layer("pooler").count_params() + 1280 * 4 + 4
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert trainable == head
        assert model.get_layer("backbone").trainable_weights == []

        unfrozen = kgp.build_classifier(
            "MobileNetV2",
            4,
            input_shape=(32, 32, 3),
            weights=None,
            freeze_backbone=False,
        )
        backbone = unfrozen.get_layer("backbone")
        assert len(backbone.trainable_weights) > 100
        moving = {
            id(v) for bn in _batch_norms(unfrozen) for v in bn.non_trainable_weights
        }
        assert moving.isdisjoint(id(v) for v in backbone.trainable_weights)

    def test_parameters_saved_table(self, capsys):
        # The classic case: a 7x7x2048 map (ResNet50 at 224) into 1000
        # classes. A 1x1 convolution stands in for ResNet50.
        stand_in = keras.Sequential(
            [keras.Input((7, 7, 3)), keras.layers.Conv2D(2048, 1)]
        )
        expected = {
            "flatten": 7 * 7 * 2048 * 1000 + 1000,
            "avg": 2048 * 1000 + 1000,
            "max": 2048 * 1000 + 1000,
            "gem": 2048 * 1000 + 1000 + 1,
            "mixed": 2 * 2048 * 1000 + 1000,
            "attention": 2048 * 1000 + 1000 + (2048 * 256 + 256) + (256 + 1),
        }
        rows = []
        for pooling, params in expected.items():
            model = kgp.build_classifier(
                stand_in, 1000, input_shape=(7, 7, 3), pooling=pooling, dropout=0.0
            )
            head = model.count_params() - stand_in.count_params()
            assert head == params
            rows.append(f"| {pooling:9} | {head:>11,} |")
            del model
        assert expected["flatten"] / expected["avg"] == pytest.approx(49, rel=1e-3)
        with capsys.disabled():
            print("\n| head      | head params |\n| --- | --- |\n" + "\n".join(rows))

    def test_user_model_backbone(self):
        backbone = _tiny_backbone()
        model = kgp.build_classifier(backbone, 2, input_shape=(16, 16, 3))
        assert model.get_layer("backbone") is not backbone
        assert isinstance(
            backbone.get_layer("block1_bn"), keras.layers.BatchNormalization
        )
        x = _images(16)
        np.testing.assert_allclose(
            model.get_layer("backbone")(x), backbone(x, training=False), rtol=1e-6
        )

    def test_grouped_convolutions_become_depthwise(self):
        # No XLA-must-compile function in exports (see test_export.py).
        inputs = keras.Input((8, 8, 4))
        x = keras.layers.Conv2D(4, 3, groups=4, padding="same", name="one_each")(inputs)
        x = keras.layers.Conv2D(8, 3, groups=4, name="multiplier_2")(x)
        x = keras.layers.Conv2D(8, 1, groups=2, name="two_groups")(x)
        backbone = keras.Model(inputs, x)
        model = kgp.build_classifier(backbone, 2, input_shape=(8, 8, 4))
        clone = model.get_layer("backbone")
        assert type(clone.get_layer("one_each")) is keras.layers.DepthwiseConv2D
        assert clone.get_layer("multiplier_2").depth_multiplier == 2
        assert type(clone.get_layer("two_groups")) is keras.layers.Conv2D
        x = RNG.normal(size=(2, 8, 8, 4)).astype("float32")
        np.testing.assert_allclose(clone(x), backbone(x), rtol=1e-5, atol=1e-5)

    def test_any_input_size(self):
        model = kgp.build_classifier(
            "ResNet50", 3, input_shape=(None, None, 3), pooling="gem", weights=None
        )
        for size in (32, 48):
            assert model.predict(_images(size), verbose=0).shape == (2, 3)

    def test_uint8_and_float_images_agree(self):
        model = kgp.build_classifier(
            "ResNet50", 3, input_shape=(32, 32, 3), weights=None
        )
        x = RNG.integers(0, 256, (2, 32, 32, 3)).astype("uint8")
        np.testing.assert_array_equal(
            model.predict(x, verbose=0), model.predict(x.astype("float32"), verbose=0)
        )

    def test_weights_from_local_file(self, tmp_path):
        stock = keras.applications.MobileNetV2(
            include_top=False, weights=None, input_shape=(32, 32, 3)
        )
        for layer in stock.layers:  # statistics unlike the initial 0 and 1
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(RNG.normal(size=layer.moving_mean.shape))
                layer.moving_variance.assign(
                    RNG.uniform(0.5, 2.0, size=layer.moving_variance.shape)
                )
        path = tmp_path / "mobilenet_v2_notop.weights.h5"
        stock.save_weights(path)

        model = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(32, 32, 3), weights=str(path)
        )
        x = _images(32)
        features = model.get_layer("backbone")(model.get_layer("preprocessing")(x))
        expected = stock(keras.applications.mobilenet_v2.preprocess_input(x.copy()))
        np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
        random = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(32, 32, 3), weights=None
        )
        assert not np.allclose(random.get_layer("backbone")(x), expected, atol=1e-3)


class TestBatchNormStaysFrozen:
    @pytest.mark.parametrize("freeze_backbone", [True, False])
    def test_training_flag_changes_nothing(self, freeze_backbone):
        model = kgp.build_classifier(
            "MobileNetV2",
            3,
            input_shape=(32, 32, 3),
            weights=None,
            dropout=0.0,
            freeze_backbone=freeze_backbone,
        )
        x = _images(32)
        np.testing.assert_allclose(
            model(x, training=True), model(x, training=False), rtol=1e-6, atol=1e-7
        )

    def test_moving_statistics_survive_unfreeze_and_fit(self):
        model = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(32, 32, 3), weights=None, dropout=0.0
        )
        x, y = _images(32, batch=4), np.array([0, 1, 2, 0])
        model.get_layer("backbone").trainable = True  # the classic pitfall
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        stats = _moving_stats(model)
        kernel = model.get_layer("backbone").get_layer("Conv_1").kernel.numpy().copy()
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        for before, after in zip(stats, _moving_stats(model), strict=True):
            np.testing.assert_array_equal(before, after)
        trained = model.get_layer("backbone").get_layer("Conv_1").kernel.numpy()
        assert not np.allclose(kernel, trained)
        x_eval = _images(32)
        np.testing.assert_allclose(
            model(x_eval, training=True), model(x_eval, training=False), rtol=1e-6
        )

    def test_from_scratch_batch_norm_trains_its_statistics(self):
        model = kgp.build_classifier(
            "MobileNetV2",
            3,
            input_shape=(32, 32, 3),
            weights=None,
            dropout=0.0,
            freeze_backbone=False,
            freeze_batch_norm=False,
        )
        assert not any(
            isinstance(bn, kgp.FrozenBatchNormalization) for bn in _batch_norms(model)
        )
        x, y = _images(32, batch=4), np.array([0, 1, 2, 0])
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        stats = _moving_stats(model)
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        moved = [
            not np.array_equal(before, after)
            for before, after in zip(stats, _moving_stats(model), strict=True)
        ]
        assert all(moved)

    def test_unfreeze_backbone_top_layers(self):
        model = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(32, 32, 3), weights=None
        )
        unfrozen = kgp.unfreeze_backbone(model, num_layers=6)
        assert [layer.name for layer in unfrozen] == [
            "block_16_depthwise",
            "block_16_project",
            "Conv_1",
        ]
        backbone = model.get_layer("backbone")
        expected = {id(w) for layer in unfrozen for w in layer.trainable_weights}
        assert {id(w) for w in backbone.trainable_weights} == expected
        assert not any(bn.trainable for bn in _batch_norms(model))

        everything = kgp.unfreeze_backbone(model)
        assert len(everything) == 52  # every convolution of MobileNetV2
        assert not any(bn.trainable for bn in _batch_norms(model))


class TestGpuReadyHead:
    @pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
    def test_mixed_precision_outputs_float32(self, policy):
        keras.config.set_dtype_policy(policy)
        model = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(32, 32, 3), pooling="gem", weights=None
        )
        assert model.get_layer("backbone").compute_dtype == policy.split("_")[1]
        assert model.output.dtype == "float32"
        probabilities = model.predict(_images(32), verbose=0)
        assert probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
        extractor = kgp.build_feature_extractor(
            _tiny_backbone(), input_shape=(16, 16, 3)
        )
        assert extractor.output.dtype == "float32"

    def test_jit_compile_fit(self):
        model = kgp.build_classifier(
            _tiny_backbone(),
            3,
            input_shape=(16, 16, 3),
            pooling="gem",
            hidden_units=(8,),
            preprocessing="caffe",
            freeze_backbone=False,
        )
        model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
        assert model.jit_compile is True
        kernel = model.get_layer("predictions").kernel.numpy().copy()
        history = model.fit(
            _images(16, batch=4), np.array([0, 1, 2, 0]), epochs=2, verbose=0
        )
        assert np.isfinite(history.history["loss"]).all()
        assert not np.allclose(kernel, model.get_layer("predictions").kernel.numpy())

    def test_mirrored_strategy_fit_on_two_cpus(self):
        # Logical devices must be set before TensorFlow starts, hence the
        # fresh process.
        script = textwrap.dedent(
            """
            import json
            import tensorflow as tf

            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * 2
            )
            import numpy as np
            import keras_globalpool as kgp

            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            with strategy.scope():
                model = kgp.build_classifier(
                    "MobileNetV2", 3, input_shape=(32, 32, 3),
                    pooling="attention", weights=None,
                )
                model.compile("adam", "sparse_categorical_crossentropy")
            kernel = model.get_layer("predictions").kernel
            before = kernel.numpy().copy()
            x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3))
            history = model.fit(x, np.arange(8) % 3, batch_size=4, verbose=0)
            print(json.dumps({
                "replicas": strategy.num_replicas_in_sync,
                "mirrored": strategy.extended.variable_created_in_scope(
                    kernel.value),
                "loss": history.history["loss"][0],
                "moved": float(np.abs(kernel.numpy() - before).max()),
            }))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["replicas"] == 2
        assert result["mirrored"] is True
        assert np.isfinite(result["loss"])
        assert result["moved"] > 0


class TestMultiscale:
    def test_default_stages(self):
        model = kgp.build_multiscale_classifier(
            "MobileNetV2", 3, input_shape=(64, 64, 3), pooling="mixed", weights=None
        )
        backbone = model.get_layer("backbone")
        assert [t.shape[1:] for t in backbone.outputs] == [
            (8, 8, 192),
            (4, 4, 576),
            (2, 2, 1280),
        ]
        assert model.get_layer("pooled_features").output.shape == (None, 2 * 2048)
        names = [layer.name for layer in model.layers]
        assert names[3:6] == ["pooler_1", "pooler_2", "pooler_3"]
        assert model.predict(_images(64), verbose=0).shape == (2, 3)
        assert all(
            isinstance(bn, kgp.FrozenBatchNormalization) for bn in _batch_norms(model)
        )

    def test_stages_by_name(self):
        model = kgp.build_multiscale_classifier(
            _tiny_backbone(),
            2,
            stages=["block1", "block2"],
            input_shape=(16, 16, 3),
            pooling="attention",
            dropout=0.0,
            freeze_backbone=False,
        )
        assert model.get_layer("pooled_features").output.shape == (None, 8 + 16)
        x = _images(16)
        np.testing.assert_allclose(
            model(x, training=True), model(x, training=False), rtol=1e-6
        )

    def test_is_build_classifier_with_stages(self):
        # The two builders share one assembly: the same seed gives the same
        # model, layer for layer, and the same predictions.
        backbone = _tiny_backbone()
        kwargs = dict(input_shape=(16, 16, 3), pooling="gem", dropout=0.0)
        keras.utils.set_random_seed(3)
        multiscale = kgp.build_multiscale_classifier(
            backbone, 2, stages=["block1", "block2"], **kwargs
        )
        keras.utils.set_random_seed(3)
        classifier = kgp.build_classifier(
            backbone, 2, stages=["block1", "block2"], **kwargs
        )
        assert [layer.name for layer in multiscale.layers] == [
            layer.name for layer in classifier.layers
        ]
        x = _images(16)
        np.testing.assert_array_equal(
            multiscale.predict(x, verbose=0), classifier.predict(x, verbose=0)
        )

    def test_auto_stages_on_build_classifier(self):
        model = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(64, 64, 3), weights=None, stages="auto"
        )
        assert model.get_layer("pooled_features").output.shape == (
            None,
            192 + 576 + 1280,
        )
        assert [t.shape[1:] for t in model.get_layer("backbone").outputs] == [
            (8, 8, 192),
            (4, 4, 576),
            (2, 2, 1280),
        ]

    def test_none_is_auto_for_the_multiscale_builder(self):
        model = kgp.build_multiscale_classifier(
            "MobileNetV2", 3, input_shape=(64, 64, 3), weights=None, stages=None
        )
        assert len(model.get_layer("backbone").outputs) == 3

    @pytest.mark.parametrize("stages", ["all", 3, [], ("block1", 2)])
    def test_bad_stages(self, stages):
        with pytest.raises(ValueError, match="`stages` must be"):
            kgp.build_classifier(
                _tiny_backbone(), 3, input_shape=(16, 16, 3), stages=stages
            )

    def test_unknown_keyword_is_a_type_error(self):
        with pytest.raises(TypeError, match="dropuot"):
            kgp.build_multiscale_classifier(
                _tiny_backbone(), 3, stages=["block1"], dropuot=0.5
            )


class TestFeatureExtractor:
    def test_gem_embeddings_are_unit_length(self):
        model = kgp.build_feature_extractor(
            "MobileNetV2", input_shape=(64, 64, 3), weights=None
        )
        assert isinstance(model.get_layer("pooler"), kgp.GlobalGeMPooling)
        embeddings = model.predict(_images(64), verbose=0)
        assert embeddings.shape == (2, 1280)
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)

    def test_without_normalization(self):
        backbone = _tiny_backbone()
        model = kgp.build_feature_extractor(
            backbone, input_shape=(16, 16, 3), pooling="avg", normalize=False
        )
        x = _images(16)
        expected = np.mean(backbone(x, training=False), axis=(1, 2))
        np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)


LOADER = textwrap.dedent(
    """
    import sys
    import traceback

    import numpy as np
    import keras

    x_path, *paths = sys.argv[1:]
    import keras_globalpool as kgp

    # By the names that importing the package registers, then with
    # custom_objects; a failure of one is written for its test.
    for how, kwargs in [
        ("import", {}),
        ("custom_objects", {"custom_objects": kgp.custom_objects()}),
    ]:
        for path in paths:
            try:
                model = keras.models.load_model(path, safe_mode=True, **kwargs)
                predictions = model.predict(np.load(x_path), verbose=0)
                np.save(f"{path}.{how}.npy", predictions)
            except Exception:
                with open(f"{path}.{how}.error", "w") as error:
                    error.write(traceback.format_exc())
    """
)


@pytest.fixture(scope="module")
def saved_builder_models(tmp_path_factory):
    """A classifier and a multi-scale classifier saved to .keras: their
    predictions by path, and a fresh process's (`PATH.HOW.npy`)."""
    folder = tmp_path_factory.mktemp("keras_files")
    models = {
        "classifier": kgp.build_classifier(
            "MobileNetV2",
            3,
            input_shape=(32, 32, 3),
            pooling="attention",
            weights=None,
            hidden_units=(8,),
        ),
        "multiscale": kgp.build_multiscale_classifier(
            "ResNet50V2", 3, input_shape=(32, 32, 3), pooling="gem", weights=None
        ),
    }
    x = _images(32)
    np.save(folder / "x.npy", x)
    expected = {}
    for name, model in models.items():
        model.save(folder / f"{name}.keras")
        expected[str(folder / f"{name}.keras")] = model.predict(x, verbose=0)
    # One fresh process loads every file both ways.
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder / "x.npy"), *expected],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return expected


@pytest.mark.parametrize("how", ["import", "custom_objects"])
def test_fresh_process_load_gives_identical_predictions(saved_builder_models, how):
    for path, predictions in saved_builder_models.items():
        error = Path(f"{path}.{how}.error")
        assert not error.exists(), error.read_text()
        np.testing.assert_allclose(np.load(f"{path}.{how}.npy"), predictions, rtol=1e-6)


class TestErrors:
    @pytest.mark.parametrize("backbone", ["ResNet18", "resnet50", 42, None])
    def test_unknown_backbone_lists_names(self, backbone):
        with pytest.raises(ValueError, match=r"'ConvNeXtTiny', .*Received: backbone="):
            kgp.build_classifier(backbone, 3, weights=None)

    @pytest.mark.parametrize("pooling", ["sum", "GAP", 3, None])
    def test_unknown_pooling_lists_names(self, pooling):
        with pytest.raises(
            ValueError, match=r"'avg', 'max', .*'flatten'\}.*Received: pooling="
        ):
            kgp.build_classifier("ResNet50", 3, pooling=pooling, weights=None)

    @pytest.mark.parametrize("num_classes", [0, -1, 2.5, True, "3"])
    def test_num_classes(self, num_classes):
        with pytest.raises(ValueError, match="`num_classes` must be an integer >= 1"):
            kgp.build_classifier("ResNet50", num_classes, weights=None)

    @pytest.mark.parametrize(
        "backbone, input_shape, minimum",
        [
            ("ResNet50", (16, 16, 3), 32),
            ("Xception", (64, 224, 3), 71),
            ("InceptionV3", (74, 74, 3), 75),
        ],
    )
    def test_input_shape_below_backbone_minimum(self, backbone, input_shape, minimum):
        match = f"at least {minimum}x{minimum} for backbone='{backbone}'"
        with pytest.raises(ValueError, match=match):
            kgp.build_classifier(backbone, 3, input_shape=input_shape, weights=None)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"input_shape": (224, 224)}, "tuple of 3 integers"),
            ({"dropout": 1.0}, r"`dropout` must be a number in \[0, 1\)"),
            ({"hidden_dropout": -0.1}, "Received: hidden_dropout=-0.1"),
            ({"hidden_units": (64, 0)}, "Received: hidden_units="),
            ({"hidden_units": 64}, "Received: hidden_units=64"),
            ({"weights": "/no/such/file.h5"}, "`weights` argument should be either"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            kgp.build_classifier("MobileNetV2", 3, **{"weights": None, **kwargs})

    def test_unknown_preprocessing(self):
        with pytest.raises(ValueError, match="`preprocessing` must be one of"):
            kgp.build_classifier(
                _tiny_backbone(), 3, input_shape=(16, 16, 3), preprocessing="imagenet"
            )

    def test_model_input_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"must match .* \(16, 16, 3\)"):
            kgp.build_classifier(_tiny_backbone(), 3, input_shape=(32, 32, 3))

    def test_model_with_two_outputs(self):
        tiny = _tiny_backbone()
        two = keras.Model(tiny.inputs, [tiny.get_layer("block1").output, tiny.output])
        with pytest.raises(ValueError, match="one input, the images, and one output"):
            kgp.build_classifier(two, 3, input_shape=(16, 16, 3))

    def test_multiscale_stages(self):
        with pytest.raises(ValueError, match=r"Unknown: \['nope'\]"):
            kgp.build_multiscale_classifier(
                _tiny_backbone(), 3, stages=["block1", "nope"], input_shape=(16, 16, 3)
            )
        with pytest.raises(ValueError, match="`stages` must be given"):
            kgp.build_multiscale_classifier(
                _tiny_backbone(), 3, input_shape=(16, 16, 3)
            )

    @pytest.mark.parametrize("num_layers", [0, -2, 1.5, True])
    def test_unfreeze_num_layers(self, num_layers):
        model = kgp.build_classifier(_tiny_backbone(), 3, input_shape=(16, 16, 3))
        with pytest.raises(ValueError, match="Received: num_layers="):
            kgp.unfreeze_backbone(model, num_layers=num_layers)
