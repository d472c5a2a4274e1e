"""Tests for `kgp.attention_maps`: the attention layer's scores, per image."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_cases import reference_attention
from viz_models import cpu_safe_conv2d

import keras_globalpool as kgp
from keras_globalpool.viz.heatmaps import resize_heatmaps

SIZE = 8


def image_shape(data_format):
    return (SIZE, SIZE, 3) if data_format == "channels_last" else (3, SIZE, SIZE)


def attention_model(
    data_format="channels_last", strides=1, normalize="sigmoid", native_conv=False
):
    """Input -> nested backbone -> attention pooler -> Dense, like the builders'.

    `native_conv` makes the backbone's conv a `Conv2D` in `data_format`,
    which for channels_first TensorFlow runs only with oneDNN or on a GPU.
    """
    inner = keras.Input(image_shape(data_format))
    if native_conv:
        features = keras.layers.Conv2D(
            8, 3, strides=strides, padding="same", data_format=data_format
        )(inner)
    else:
        features = cpu_safe_conv2d(inner, 8, data_format, strides)
    backbone = keras.Model(inner, features, name="backbone")
    inputs = keras.Input(image_shape(data_format))
    pooler = kgp.GlobalAttentionPooling(
        reduction=2,
        normalize=normalize,
        bias_initializer="random_normal",
        data_format=data_format,
        name="pooler",
    )
    outputs = keras.layers.Dense(3, name="predictions")(pooler(backbone(inputs)))
    return keras.Model(inputs, outputs), backbone, pooler


def hand_scores(backbone, pooler, images, data_format):
    """The attention branch by hand: 1x1 conv, ReLU, 1x1 conv, normalized."""
    features = keras.ops.convert_to_numpy(backbone(images))
    if data_format == "channels_first":
        features = np.moveaxis(features, 1, -1)
    w1, b1, w2, b2 = (keras.ops.convert_to_numpy(w) for w in pooler.weights)
    logits = (np.maximum(features @ w1 + b1, 0.0) @ w2 + b2)[..., 0]
    if pooler.normalize == "sigmoid":
        weights = 1.0 / (1.0 + np.exp(-logits))
    else:
        weights = np.exp(logits - logits.max(axis=(1, 2), keepdims=True))
    return weights / weights.sum(axis=(1, 2), keepdims=True)


def random_images(data_format, count=3):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (count,) + image_shape(data_format)).astype("float32")


@pytest.mark.parametrize("normalize", ["sigmoid", "softmax"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_maps_are_the_layer_scores(data_format, normalize):
    keras.utils.set_random_seed(0)
    model, backbone, pooler = attention_model(data_format, normalize=normalize)
    images = random_images(data_format)

    maps = kgp.attention_maps(model, images)

    expected = hand_scores(backbone, pooler, images, data_format)
    assert maps.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-4)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_gated_attention_maps_are_its_scores(data_format, gated):
    keras.utils.set_random_seed(3)
    inner = keras.Input(image_shape(data_format))
    backbone = keras.Model(inner, cpu_safe_conv2d(inner, 8, data_format), name="b")
    inputs = keras.Input(image_shape(data_format))
    pooler = kgp.GlobalGatedAttentionPooling(
        units=4, gated=gated, bias_initializer="random_normal", data_format=data_format
    )
    outputs = keras.layers.Dense(3)(pooler(backbone(inputs)))
    model = keras.Model(inputs, outputs)
    images = random_images(data_format)

    maps = kgp.attention_maps(model, images)

    features = keras.ops.convert_to_numpy(backbone(images))
    if data_format == "channels_first":
        features = np.moveaxis(features, 1, -1)
    weights = [keras.ops.convert_to_numpy(w) for w in pooler.weights]
    hidden = np.tanh(features @ weights[0] + weights[1])
    if gated:
        hidden = hidden / (1.0 + np.exp(-(features @ weights[2] + weights[3])))
    logits = (hidden @ weights[-1])[..., 0]
    expected = np.exp(logits - logits.max(axis=(1, 2), keepdims=True))
    expected /= expected.sum(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "pooling",
    [
        kgp.GlobalSimPooling(num_heads=2),
        kgp.GlobalMultiHeadAttentionPooling(num_heads=2, latent_len=3),
    ],
    ids=["simpool", "map"],
)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_multi_head_maps_are_the_mean_of_the_heads_scores(data_format, pooling):
    # The NumPy reference's scores, (batch, heads[, latents], height, width),
    # averaged over every head and latent query: still weights summing to 1.
    keras.utils.set_random_seed(4)
    inner = keras.Input(image_shape(data_format))
    backbone = keras.Model(inner, cpu_safe_conv2d(inner, 8, data_format), name="b")
    config = {**pooling.get_config(), "data_format": data_format}
    pooler = type(pooling).from_config(config)
    inputs = keras.Input(image_shape(data_format))
    model = keras.Model(inputs, keras.layers.Dense(3)(pooler(backbone(inputs))))
    images = random_images(data_format)

    maps = kgp.attention_maps(model, images)

    features = keras.ops.convert_to_numpy(backbone(images)).astype("float64")
    _, scores = reference_attention(pooler, features)
    expected = scores.reshape(len(images), -1, SIZE, SIZE).mean(axis=1)
    assert scores.ndim == (4 if isinstance(pooler, kgp.GlobalSimPooling) else 5)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-4)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_coarse_scores_are_upsampled_to_the_input(data_format):
    keras.utils.set_random_seed(1)
    model, backbone, pooler = attention_model(data_format, strides=2)
    images = random_images(data_format)

    maps = kgp.attention_maps(model, images)
    shown = kgp.attention_maps(model, images, normalize=True)

    coarse = hand_scores(backbone, pooler, images, data_format)
    assert coarse.shape == (3, SIZE // 2, SIZE // 2)
    np.testing.assert_allclose(
        maps, resize_heatmaps(coarse, (SIZE, SIZE)), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(shown.min(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(shown.max(axis=(1, 2)), 1.0, atol=1e-6)
    np.testing.assert_array_equal(
        np.argmax(shown.reshape(3, -1), axis=1), np.argmax(maps.reshape(3, -1), axis=1)
    )


def test_native_channels_first_gives_the_scores_or_says_why_not():
    keras.utils.set_random_seed(2)
    model, _, _ = attention_model("channels_first", strides=2, native_conv=True)
    twin, twin_backbone, twin_pooler = attention_model("channels_last", strides=2)
    twin.set_weights(model.get_weights())
    images = random_images("channels_first")
    try:
        model.predict(images, verbose=0)
    except tf.errors.UnimplementedError:
        with pytest.raises(ValueError, match="uses channels_first convolutions"):
            kgp.attention_maps(model, images)
        return

    maps = kgp.attention_maps(model, images)

    # Conv2D kernels have one shape in both layouts, so the channels_last
    # twin computes the same features, transposed.
    twin_images = np.moveaxis(images, 1, -1)
    coarse = hand_scores(twin_backbone, twin_pooler, twin_images, "channels_last")
    np.testing.assert_allclose(
        maps, resize_heatmaps(coarse, (SIZE, SIZE)), rtol=1e-4, atol=1e-7
    )


def test_model_without_attention_raises():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = kgp.GlobalAveragePooling()(keras.layers.Conv2D(2, 1)(inputs))
    model = keras.Model(inputs, x)
    expected = "no top-level layer of type {BaseAttentionPooling, GlobalSimPooling"
    with pytest.raises(ValueError, match=expected):
        kgp.attention_maps(model, random_images("channels_last"))


def test_layer_name_of_another_pooling_raises():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = kgp.GlobalMaxPooling(name="peak")(keras.layers.Conv2D(2, 1)(inputs))
    model = keras.Model(inputs, x)
    with pytest.raises(ValueError, match="Received: layer_name='peak'"):
        kgp.attention_maps(model, random_images("channels_last"), layer_name="peak")
