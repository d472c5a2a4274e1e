"""Shapes, configs, the Keras layer harness, the registry and argument errors."""

import keras
import numpy as np
import pytest
from keras import ops
from layer_cases import (
    DATA_FORMATS,
    LAYER_CASES,
    RANKS,
    TRAINABLE_WEIGHTS,
    input_shape,
    make_layer,
    random_input,
    randomize_weights,
    reference_forward,
    to_numpy,
)

import keras_globalpool as kgp


def _output_shape(case, shape, data_format, keepdims):
    channel_axis = len(shape) - 1 if data_format == "channels_last" else 1
    channels = shape[channel_axis] * (2 if case == "mixed" else 1)
    if not keepdims:
        return (shape[0], channels)
    out = [1] * len(shape)
    out[0], out[channel_axis] = shape[0], channels
    return tuple(out)


class TestBasic:
    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_output_shape(self, case, rank, data_format, keepdims):
        shape = input_shape(rank, data_format)
        layer = make_layer(case, data_format=data_format, keepdims=keepdims)
        expected = _output_shape(case, shape, data_format, keepdims)
        assert tuple(layer(np.zeros(shape, "float32")).shape) == expected
        assert layer.compute_output_shape(shape) == expected

    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_built_at_creation_exactly_when_weightless(self, case):
        # Keras's rule for its own layers: nothing to build, built at once.
        assert make_layer(case).built == (case not in TRAINABLE_WEIGHTS)

    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_stateless_call_matches_the_oracle(self, case, data_format):
        """The JAX functional pattern: weights passed in, none read from the layer."""
        x = random_input(input_shape(4, data_format), dtype="float32")
        layer = make_layer(case, data_format=data_format)
        if not layer.built:
            layer.build(x.shape)
            randomize_weights(layer)
        trainable = [ops.convert_to_tensor(w.numpy()) for w in layer.trainable_weights]
        fixed = [ops.convert_to_tensor(w.numpy()) for w in layer.non_trainable_weights]
        out, new_fixed = layer.stateless_call(trainable, fixed, x)
        assert len(new_fixed) == len(fixed)
        np.testing.assert_allclose(
            to_numpy(out),
            reference_forward(layer, x.astype("float64")),
            rtol=1e-5,
            atol=1e-6,
        )

    def test_registry_and_layer_cases_agree(self):
        """A pooling added to `kgp.POOLINGS` must get a case in layer_cases.py,
        which every common test then runs."""
        assert {name for name, _ in LAYER_CASES.values()} == set(kgp.POOLINGS)

    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_unknown_spatial_size(self, case):
        inputs = keras.Input((None, None, 6))
        model = keras.Model(inputs, make_layer(case)(inputs))
        for size in [(3, 5), (8, 2)]:
            out = model.predict(np.ones((2, *size, 6), "float32"), verbose=0)
            assert out.shape == (2, 12 if case == "mixed" else 6)

    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_config_round_trip(self, case):
        layer = make_layer(case, data_format="channels_first", keepdims=True, name="p")
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
        assert config["data_format"] == "channels_first"
        assert config["keepdims"] is True
        restored = kgp.get(keras.saving.serialize_keras_object(layer))
        assert type(restored) is type(layer)
        assert restored.get_config() == config

    def test_data_format_follows_keras_config(self):
        keras.config.set_image_data_format("channels_first")
        for name in kgp.POOLINGS:
            assert kgp.get(name).data_format == "channels_first"

    def test_attention_bottleneck_size(self):
        layer = kgp.GlobalAttentionPooling(reduction=8)
        layer(np.zeros((1, 3, 3, 20), "float32"))
        assert tuple(layer.hidden_kernel.shape) == (20, 2)
        small = kgp.GlobalAttentionPooling(reduction=8)
        small(np.zeros((1, 3, 3, 4), "float32"))
        assert tuple(small.hidden_kernel.shape) == (4, 1)

    @pytest.mark.parametrize(
        "gated, names",
        [
            (
                True,
                [
                    "hidden_kernel",
                    "hidden_bias",
                    "gate_kernel",
                    "gate_bias",
                    "score_kernel",
                ],
            ),
            (False, ["hidden_kernel", "hidden_bias", "score_kernel"]),
        ],
    )
    def test_gated_attention_weights(self, gated, names):
        layer = kgp.GlobalGatedAttentionPooling(units=5, gated=gated)
        layer(np.zeros((1, 7, 20), "float32"))
        assert [w.name for w in layer.trainable_weights] == names
        assert tuple(layer.hidden_kernel.shape) == (20, 5)
        assert tuple(layer.score_kernel.shape) == (5, 1)
        assert kgp.GlobalGatedAttentionPooling().units == 128  # the authors' size

    def test_trainable_r(self):
        fixed = kgp.GlobalLSEPooling(trainable_r=False)
        fixed(np.ones((1, 2, 2, 3), "float32"))
        assert fixed.trainable_weights == []
        assert [w.name for w in fixed.non_trainable_weights] == ["r"]
        assert kgp.GlobalLSEPooling().r == 10.0  # timm's LsePlus2d default

    def test_trainable_p(self):
        fixed = kgp.GlobalGeMPooling(trainable_p=False)
        fixed(np.ones((1, 2, 2, 3), "float32"))
        assert fixed.trainable_weights == []
        assert len(fixed.non_trainable_weights) == 1


class TestRegistry:
    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_get_by_name(self, name):
        assert isinstance(kgp.get(name), kgp.POOLINGS[name])

    def test_get_passes_kwargs_and_instances(self):
        assert kgp.get("mixed", mode="mean").mode == "mean"
        layer = kgp.GlobalMaxPooling()
        assert kgp.get(layer) is layer

    @pytest.mark.parametrize("bad", ["sum", "GAP", "", None, 3])
    def test_get_unknown_lists_names(self, bad):
        with pytest.raises(
            ValueError, match="'avg', 'max', 'mixed', 'attention', 'gem'"
        ):
            kgp.get(bad)

    def test_custom_objects_cover_every_layer(self):
        objects = kgp.custom_objects()
        assert set(objects.values()) >= set(kgp.POOLINGS.values())
        for name, cls in objects.items():
            assert keras.saving.get_registered_object(f"keras_globalpool>{name}") is cls


class TestErrors:
    @pytest.mark.parametrize("shape", [(2, 4), (2, 3, 3, 3, 3, 4), (4,)])
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_wrong_rank(self, case, shape):
        # Keras's own input_spec message, as its layers give it.
        with pytest.raises(ValueError, match=r"expected (min|max)_ndim=[35], found"):
            make_layer(case)(np.zeros(shape, "float32"))
        with pytest.raises(ValueError, match=r"rank 3, 4 or 5.*Received: input_shape="):
            make_layer(case).compute_output_shape(shape)

    @pytest.mark.parametrize("bad", ["NHWC", "channels_middle", "channels_Last"])
    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_unknown_data_format(self, name, bad):
        with pytest.raises(ValueError, match=f"Received: data_format='{bad}'"):
            kgp.get(name, data_format=bad)

    @pytest.mark.parametrize("bad", ["sum", "max", "", None])
    def test_unknown_mode(self, bad):
        with pytest.raises(
            ValueError, match=r"\{'concat', 'mean', 'learned'\}. Received: mode="
        ):
            kgp.GlobalMixedPooling(mode=bad)

    @pytest.mark.parametrize("bad", ["relu", "Softmax", None])
    def test_unknown_normalize(self, bad):
        with pytest.raises(
            ValueError, match=r"\{'sigmoid', 'softmax'\}. Received: normalize="
        ):
            kgp.GlobalAttentionPooling(normalize=bad)

    @pytest.mark.parametrize("bad", [0, -1.0, -3, float("nan"), "3", None, True])
    def test_bad_p(self, bad):
        with pytest.raises(
            ValueError, match="`p` must be a finite number > 0. Received: p="
        ):
            kgp.GlobalGeMPooling(p=bad)

    @pytest.mark.parametrize(
        "bad", [0, 0.0, -1.0, -3, float("nan"), float("inf"), "3", None, True, [2.0]]
    )
    def test_bad_r(self, bad):
        with pytest.raises(
            ValueError, match=r"`r` must be a finite number > 0. Received: r="
        ):
            kgp.GlobalLSEPooling(r=bad)

    @pytest.mark.parametrize("bad", ["yes", None, 2])
    def test_bad_trainable_r(self, bad):
        with pytest.raises(ValueError, match="Received: trainable_r="):
            kgp.GlobalLSEPooling(trainable_r=bad)

    @pytest.mark.parametrize("bad", [0, -1, 0.5, 2.0, "8", None])
    def test_bad_reduction(self, bad):
        with pytest.raises(ValueError, match="integer >= 1. Received: reduction="):
            kgp.GlobalAttentionPooling(reduction=bad)

    @pytest.mark.parametrize("bad", [0, -1, 0.5, 2.0, "8", None, True])
    def test_bad_units(self, bad):
        with pytest.raises(ValueError, match="integer >= 1. Received: units="):
            kgp.GlobalGatedAttentionPooling(units=bad)

    @pytest.mark.parametrize("bad", ["yes", None, 2, "True"])
    def test_bad_gated(self, bad):
        with pytest.raises(
            ValueError, match=f"`gated` must be a bool. Received: gated={bad!r}"
        ):
            kgp.GlobalGatedAttentionPooling(gated=bad)

    @pytest.mark.parametrize("bad", [0, -1e-3])
    def test_bad_eps(self, bad):
        with pytest.raises(ValueError, match="Received: eps="):
            kgp.GlobalGeMPooling(eps=bad)

    @pytest.mark.parametrize("case", ["attention", "mixed_learned", "gated_attention"])
    def test_unknown_channels_for_weights(self, case):
        with pytest.raises(ValueError, match="known number of channels"):
            make_layer(case)(keras.Input((None, None, None)))
