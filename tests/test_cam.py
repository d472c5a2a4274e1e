"""Tests for `kgp.class_activation_maps`: CAM, Grad-CAM and their upsampling."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_cases import make_pooling
from viz_models import cpu_safe_conv2d

import keras_globalpool as kgp
from keras_globalpool.viz.cam import resolve_method
from keras_globalpool.viz.heatmaps import normalize_heatmaps, resize_heatmaps

SIZE = 8


def image_shape(data_format, size=SIZE, channels=3):
    if data_format == "channels_last":
        return (size, size, channels)
    return (channels, size, size)


def random_images(data_format, count=3, size=SIZE):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (count,) + image_shape(data_format, size)).astype(
        "float32"
    )


def backbone_model(data_format, strides=1, native_conv=False):
    """A nested sub-model, as the builders put the backbone in the model.

    `native_conv` makes its conv a `Conv2D` in `data_format`, which for
    channels_first TensorFlow can run only with oneDNN or on a GPU.
    """
    inputs = keras.Input(image_shape(data_format))
    if native_conv:
        features = keras.layers.Conv2D(
            4, 3, strides=strides, padding="same", data_format=data_format
        )(inputs)
    else:
        features = cpu_safe_conv2d(inputs, 4, data_format, strides)
    return keras.Model(inputs, features, name="backbone")


def classifier(data_format="channels_last", head=None, strides=1, native_conv=False):
    """Input -> Rescaling -> backbone -> pooler -> head, like the builders'."""
    head = head or [
        kgp.GlobalAveragePooling(data_format=data_format, name="pooler"),
        keras.layers.Dropout(0.3, name="dropout"),
        keras.layers.Dense(3, activation="softmax", name="predictions"),
    ]
    backbone = backbone_model(data_format, strides, native_conv)
    inputs = keras.Input(image_shape(data_format))
    x = backbone(keras.layers.Rescaling(0.5)(inputs))
    for layer in head:
        x = layer(x)
    return keras.Model(inputs, x), backbone


def channels_last_features(backbone, images, data_format):
    features = keras.ops.convert_to_numpy(backbone(0.5 * images))
    if data_format == "channels_first":
        return np.moveaxis(features, 1, -1)
    return features


def hand_cam(model, backbone, images, classes, data_format):
    """Zhou et al.: the feature maps summed with the class's Dense weights."""
    features = channels_last_features(backbone, images, data_format)
    kernel = keras.ops.convert_to_numpy(model.get_layer("predictions").kernel)
    return np.stack([f @ kernel[:, k] for f, k in zip(features, classes, strict=True)])


def hand_minmax(maps):
    """Each map to [0, 1]; a constant map (nothing to show) to zeros."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)


class TestHeatmapPostProcessing:
    def test_resize_uses_half_pixel_bilinear_sampling(self):
        coarse = np.array([[[0.0, 1.0], [0.0, 1.0]]])
        expected = np.tile([0.0, 0.25, 0.75, 1.0], (4, 1))
        np.testing.assert_allclose(resize_heatmaps(coarse, (4, 4))[0], expected)

    def test_normalize_is_minmax_per_map_and_zero_for_constant(self):
        maps = np.array([[[2.0, 4.0], [3.0, 4.0]], [[5.0, 5.0], [5.0, 5.0]]])
        np.testing.assert_allclose(
            normalize_heatmaps(maps), [[[0, 1], [0.5, 1]], [[0, 0], [0, 0]]]
        )


class TestCAM:
    @pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
    def test_equals_dense_weighted_sum_of_feature_maps(self, data_format):
        keras.utils.set_random_seed(0)
        model, backbone = classifier(data_format)
        images = random_images(data_format)
        predicted = np.argmax(model.predict(images, verbose=0), axis=-1)

        maps = kgp.class_activation_maps(model, images)

        assert resolve_method(model) == "cam"
        expected = hand_minmax(
            hand_cam(model, backbone, images, predicted, data_format)
        )
        assert maps.shape == (3, SIZE, SIZE)
        np.testing.assert_allclose(maps, expected, atol=1e-5)

    def test_given_class_per_image(self):
        keras.utils.set_random_seed(1)
        model, backbone = classifier()
        images = random_images("channels_last")
        classes = np.array([2, 0, 1])

        maps = kgp.class_activation_maps(model, images, class_index=classes)
        one_class = kgp.class_activation_maps(model, images, class_index=2)

        expected = hand_minmax(
            hand_cam(model, backbone, images, classes, "channels_last")
        )
        np.testing.assert_allclose(maps, expected, atol=1e-5)
        np.testing.assert_allclose(maps[0], one_class[0], atol=1e-6)
        assert not np.allclose(maps[1], one_class[1], atol=1e-3)

    @pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
    def test_coarse_map_is_upsampled_then_normalized(self, data_format):
        keras.utils.set_random_seed(2)
        model, backbone = classifier(data_format, strides=2)
        images = random_images(data_format)

        maps = kgp.class_activation_maps(model, images, class_index=0)

        coarse = hand_cam(model, backbone, images, [0, 0, 0], data_format)
        assert coarse.shape == (3, SIZE // 2, SIZE // 2)
        expected = hand_minmax(resize_heatmaps(coarse, (SIZE, SIZE)))
        assert maps.shape == (3, SIZE, SIZE)
        np.testing.assert_allclose(maps, expected, atol=1e-5)

    def test_sequential_model_with_keras_pooling(self):
        keras.utils.set_random_seed(3)
        conv = keras.layers.Conv2D(4, 3, padding="same")
        dense = keras.layers.Dense(2)
        model = keras.Sequential(
            [
                keras.Input((SIZE, SIZE, 3)),
                conv,
                keras.layers.GlobalAveragePooling2D(),
                dense,
            ]
        )
        images = random_images("channels_last")

        maps = kgp.class_activation_maps(model, images, class_index=1)

        features = keras.ops.convert_to_numpy(conv(images))
        kernel = keras.ops.convert_to_numpy(dense.kernel)
        np.testing.assert_allclose(
            maps, hand_minmax(features @ kernel[:, 1]), atol=1e-5
        )


class TestGradCAM:
    def test_equals_rectified_cam_on_a_gap_dense_head(self):
        # d logit_k / d f[i, j, c] = kernel[c, k] / (h * w): Grad-CAM is the
        # CAM scaled by a positive constant, then rectified.
        keras.utils.set_random_seed(4)
        model, backbone = classifier()
        images = random_images("channels_last")

        maps = kgp.class_activation_maps(model, images, class_index=1, method="gradcam")

        cam = hand_cam(model, backbone, images, [1, 1, 1], "channels_last")
        np.testing.assert_allclose(maps, hand_minmax(np.maximum(cam, 0.0)), atol=1e-5)

    @pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
    def test_equals_hand_gradient_through_a_hidden_layer(self, data_format):
        keras.utils.set_random_seed(5)
        hidden = keras.layers.Dense(5, activation="relu", name="hidden")
        model, backbone = classifier(
            data_format,
            head=[
                kgp.GlobalAveragePooling(data_format=data_format, name="pooler"),
                hidden,
                keras.layers.Dense(3, activation="softmax", name="predictions"),
            ],
        )
        images = random_images(data_format)

        maps = kgp.class_activation_maps(model, images, class_index=2)

        assert resolve_method(model) == "gradcam"
        features = channels_last_features(backbone, images, data_format)
        w1, b1 = (keras.ops.convert_to_numpy(w) for w in hidden.weights)
        w2 = keras.ops.convert_to_numpy(model.get_layer("predictions").kernel)
        active = (features.mean(axis=(1, 2)) @ w1 + b1) > 0
        # Mean over positions of d logit_2 / d f, one weight per channel.
        channel_weights = (active * w2[:, 2]) @ w1.T / (SIZE * SIZE)
        cams = np.einsum("bhwc,bc->bhw", features, channel_weights)
        np.testing.assert_allclose(maps, hand_minmax(np.maximum(cams, 0.0)), atol=1e-5)

    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_every_pooling_gives_the_gradient_taken_by_hand(self, name):
        # Each channel's weight is the mean over positions of d logit / d map,
        # taken here with a tape on the backbone's maps.
        keras.utils.set_random_seed(10)
        pooler = make_pooling(name, name="pooler")
        dense = keras.layers.Dense(3, name="predictions")
        model, backbone = classifier(head=[pooler, keras.layers.Flatten(), dense])
        images = random_images("channels_last")

        maps = kgp.class_activation_maps(model, images, class_index=1, method="gradcam")

        features = tf.constant(backbone(0.5 * images))
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = dense(keras.layers.Flatten()(pooler(features)))[:, 1]
        channel_weights = tape.gradient(logits, features).numpy().mean(axis=(1, 2))
        cams = np.einsum("bhwc,bc->bhw", features.numpy(), channel_weights)
        np.testing.assert_allclose(maps, hand_minmax(np.maximum(cams, 0.0)), atol=1e-5)


class TestNativeChannelsFirst:
    """A channels_first `Conv2D`, which TensorFlow's CPU runs only with oneDNN."""

    @pytest.mark.parametrize("method", ["cam", "gradcam"])
    def test_gives_true_maps_or_says_why_not(self, method):
        keras.utils.set_random_seed(10)
        model, _ = classifier("channels_first", strides=2, native_conv=True)
        twin, twin_backbone = classifier("channels_last", strides=2)
        twin.set_weights(model.get_weights())
        images = random_images("channels_first")
        try:
            model.predict(images, verbose=0)
        except tf.errors.UnimplementedError:
            with pytest.raises(ValueError, match="uses channels_first convolutions"):
                kgp.class_activation_maps(model, images, [0, 2, 1], method)
            return

        maps = kgp.class_activation_maps(model, images, [0, 2, 1], method)

        # Conv2D kernels have one shape in both layouts, so the
        # channels_last twin computes the same features, transposed.
        twin_images = np.moveaxis(images, 1, -1)
        cam = hand_cam(twin, twin_backbone, twin_images, [0, 2, 1], "channels_last")
        if method == "gradcam":
            cam = np.maximum(cam, 0.0)
        expected = hand_minmax(resize_heatmaps(cam, (SIZE, SIZE)))
        np.testing.assert_allclose(maps, expected, atol=1e-5)

    def test_other_unimplemented_errors_pass_through(self):
        class Unimplemented(keras.layers.Layer):
            def compute_output_spec(self, x):
                return keras.KerasTensor(x.shape, x.dtype)

            def call(self, x):
                raise tf.errors.UnimplementedError(None, None, "no such kernel")

        model, _ = classifier(
            head=[Unimplemented(), kgp.GlobalAveragePooling(), keras.layers.Dense(2)]
        )
        with pytest.raises(tf.errors.UnimplementedError, match="no such kernel"):
            kgp.class_activation_maps(model, random_images("channels_last"))


def head(name):
    """Layers after the backbone, for each kind of head."""
    dense = keras.layers.Dense(3, name="predictions")
    return {
        "avg": [kgp.GlobalAveragePooling(), keras.layers.Dropout(0.2), dense],
        "keras_avg": [keras.layers.GlobalAveragePooling2D(), dense],
        "max": [kgp.GlobalMaxPooling(), dense],
        "mixed": [kgp.GlobalMixedPooling(), dense],
        "gem": [kgp.GlobalGeMPooling(), dense],
        "attention": [kgp.GlobalAttentionPooling(reduction=2), dense],
        "hidden": [kgp.GlobalAveragePooling(), keras.layers.Dense(4), dense],
        "keepdims": [
            kgp.GlobalAveragePooling(keepdims=True),
            keras.layers.Flatten(),
            dense,
        ],
        "flatten": [keras.layers.Flatten(), dense],
    }[name]


class TestMethodChoice:
    @pytest.mark.parametrize(
        "name, expected",
        [
            ("avg", "cam"),
            ("keras_avg", "cam"),
            ("max", "gradcam"),
            ("mixed", "gradcam"),
            ("gem", "gradcam"),
            ("attention", "gradcam"),
            ("hidden", "gradcam"),
            ("keepdims", "gradcam"),
            ("flatten", "gradcam"),
        ],
    )
    def test_auto_uses_cam_only_for_gap_dense_heads(self, name, expected):
        keras.utils.set_random_seed(6)
        model, _ = classifier(head=head(name))
        images = random_images("channels_last", count=2)

        maps = kgp.class_activation_maps(model, images, class_index=0)

        assert resolve_method(model) == expected
        assert maps.shape == (2, SIZE, SIZE)
        assert maps.min() >= 0.0 and maps.max() <= 1.0

    def test_cam_on_another_head_raises(self):
        model, _ = classifier(head=head("max"))
        with pytest.raises(ValueError, match="method='cam'.*GlobalMaxPooling"):
            kgp.class_activation_maps(
                model, random_images("channels_last"), method="cam"
            )

    def test_unknown_method_raises(self):
        model, _ = classifier()
        with pytest.raises(
            ValueError, match=r"\{'auto', 'cam', 'gradcam'\}. Received: method='grad'"
        ):
            kgp.class_activation_maps(
                model, random_images("channels_last"), method="grad"
            )

    @pytest.mark.parametrize("class_index", [3, -1, [0, 1], 1.5])
    def test_bad_class_index_raises(self, class_index):
        model, _ = classifier()
        with pytest.raises(ValueError, match="Received: class_index="):
            kgp.class_activation_maps(
                model, random_images("channels_last"), class_index=class_index
            )

    def test_model_without_pooling_raises(self):
        inputs = keras.Input((SIZE, SIZE, 3))
        model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
        with pytest.raises(ValueError, match="Pass `layer_name`"):
            kgp.class_activation_maps(model, random_images("channels_last"))

    @pytest.mark.parametrize("method", ["cam", "gradcam"])
    def test_model_with_two_outputs_raises(self, method):
        model, _ = classifier()
        two = keras.Model(model.inputs, [model.output, model.output])
        with pytest.raises(
            ValueError, match="single output. Received a model with 2 outputs"
        ):
            kgp.class_activation_maps(
                two, random_images("channels_last"), method=method
            )

    def test_model_with_two_inputs_raises(self):
        model, _ = classifier()
        extra = keras.Input((1,))
        two = keras.Model([model.input, extra], model.output)
        with pytest.raises(
            ValueError, match="single image input. Received a model with 2 image"
        ):
            kgp.class_activation_maps(two, random_images("channels_last"))


def bright_squares(count, rng, size=32, side=6):
    """Noise, and in images of class 1 a bright square at a random place."""
    images = rng.uniform(0.0, 0.5, (count, size, size, 1)).astype("float32")
    labels = rng.integers(0, 2, count)
    corners = rng.integers(0, size - side + 1, (count, 2))
    for image, label, (top, left) in zip(images, labels, corners, strict=True):
        if label:
            image[top : top + side, left : left + side] = 1.0
    return images, labels, corners


def test_trained_model_puts_the_cam_peak_on_the_square():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels, _ = bright_squares(512, rng)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = kgp.GlobalAveragePooling(name="pooler")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    test_images, test_labels, corners = bright_squares(32, rng)
    squares = test_images[test_labels == 1][:8]

    maps = kgp.class_activation_maps(model, squares)

    for heatmap, (top, left) in zip(maps, corners[test_labels == 1][:8], strict=True):
        row, column = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        # The map is 16x16 upsampled to 32x32: allow one pixel around the square.
        assert top - 1 <= row <= top + 6 and left - 1 <= column <= left + 6


class TestBuilderModels:
    """Models from `build_classifier`: preprocessing, a nested backbone, a head."""

    @staticmethod
    def features(model, images):
        preprocessed = model.get_layer("preprocessing")(images)
        return keras.ops.convert_to_numpy(model.get_layer("backbone")(preprocessed))

    def test_cam_and_gradcam_of_a_gap_head(self):
        keras.utils.set_random_seed(7)
        model = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(64, 64, 3), weights=None
        )
        images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3))

        cam = kgp.class_activation_maps(model, images, class_index=[0, 2])
        gradcam = kgp.class_activation_maps(
            model, images, class_index=[0, 2], method="gradcam"
        )

        features = self.features(model, images)
        assert features.shape == (2, 2, 2, 1280)
        kernel = keras.ops.convert_to_numpy(model.get_layer("predictions").kernel)
        raw = np.stack([features[0] @ kernel[:, 0], features[1] @ kernel[:, 2]])
        upsampled = resize_heatmaps(raw, (64, 64))
        np.testing.assert_allclose(cam, hand_minmax(upsampled), atol=1e-4)
        np.testing.assert_allclose(
            gradcam,
            hand_minmax(resize_heatmaps(np.maximum(raw, 0.0), (64, 64))),
            atol=1e-4,
        )
        assert gradcam.max() == 1.0

    @pytest.mark.parametrize(
        "kwargs", [{"pooling": "flatten"}, {"pooling": "gem", "hidden_units": (8,)}]
    )
    def test_other_heads_fall_back_to_gradcam(self, kwargs):
        keras.utils.set_random_seed(8)
        model = kgp.build_classifier(
            "MobileNetV2", 3, input_shape=(64, 64, 3), weights=None, **kwargs
        )
        images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3))

        maps = kgp.class_activation_maps(model, images)

        assert resolve_method(model) == "gradcam"
        assert maps.shape == (2, 64, 64)
        assert maps.min() >= 0.0 and maps.max() <= 1.0
        with pytest.raises(ValueError, match="method='cam'"):
            kgp.class_activation_maps(model, images, method="cam")

    def test_multiscale_model_needs_a_layer_name(self):
        keras.utils.set_random_seed(9)
        model = kgp.build_multiscale_classifier(
            "MobileNetV2", 3, input_shape=(32, 32, 3), weights=None
        )
        images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3))
        with pytest.raises(ValueError, match="several pooling layers"):
            kgp.class_activation_maps(model, images)

        maps = kgp.class_activation_maps(model, images, layer_name="pooler_1")

        assert resolve_method(model, layer_name="pooler_1") == "gradcam"
        assert maps.shape == (2, 32, 32)
        assert maps.max() == 1.0
