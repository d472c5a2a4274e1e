"""Shapes, configs, the Keras layer harness, the registry and argument errors."""

import keras
import numpy as np
import pytest
from keras import ops
from layer_cases import (
    DATA_FORMATS,
    LAYER_CASES,
    NOT_PER_CHANNEL,
    RANKS,
    TRAINABLE_WEIGHTS,
    input_shape,
    keepdims_kwargs,
    make_layer,
    make_pooling,
    pooled_size,
    random_input,
    randomize_weights,
    reference_forward,
    to_numpy,
)

import keras_globalpool as kgp


def _output_shape(case, shape, data_format, keepdims):
    channel_axis = len(shape) - 1 if data_format == "channels_last" else 1
    channels = pooled_size(case, shape[channel_axis])
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
        kwargs = keepdims_kwargs(case, keepdims)
        layer = make_layer(case, data_format=data_format, **kwargs)
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
            assert out.shape == (2, pooled_size(case, 6))

    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_config_round_trip(self, case):
        per_channel = case not in NOT_PER_CHANNEL
        kwargs = {"keepdims": True} if per_channel else {}
        layer = make_layer(case, data_format="channels_first", name="p", **kwargs)
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
        assert config["data_format"] == "channels_first"
        if per_channel:
            assert config["keepdims"] is True
        else:
            assert "keepdims" not in config
        restored = kgp.get(keras.saving.serialize_keras_object(layer))
        assert type(restored) is type(layer)
        assert restored.get_config() == config

    def test_data_format_follows_keras_config(self):
        keras.config.set_image_data_format("channels_first")
        for name in kgp.POOLINGS:
            assert make_pooling(name).data_format == "channels_first"

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

    @pytest.mark.parametrize(
        "kwargs, names",
        [
            ({}, ["norm_gamma", "norm_beta", "query_kernel", "key_kernel"]),
            (
                {"num_heads": 4, "qkv_bias": True, "qk_norm": True},
                [
                    "norm_gamma",
                    "norm_beta",
                    "query_kernel",
                    "query_bias",
                    "key_kernel",
                    "key_bias",
                    "query_norm_gamma",
                    "query_norm_beta",
                    "key_norm_gamma",
                    "key_norm_beta",
                ],
            ),
        ],
    )
    def test_sim_pool_weights(self, kwargs, names):
        layer = kgp.GlobalSimPooling(**kwargs)
        layer(np.zeros((1, 7, 12), "float32"))
        assert [w.name for w in layer.trainable_weights] == names
        assert tuple(layer.query_kernel.shape) == (12, 12)  # (in, out)
        if layer.qk_norm:
            assert tuple(layer.key_norm_gamma.shape) == (3,)  # each head's 3
        np.testing.assert_array_equal(layer.norm_gamma.numpy(), 1.0)  # torch's
        np.testing.assert_array_equal(layer.norm_beta.numpy(), 0.0)
        default = kgp.GlobalSimPooling()
        assert (default.num_heads, default.qkv_bias, default.qk_norm) == (
            1,
            False,
            False,
        )
        assert (default.gamma, default.layer_norm_epsilon) == (None, 1e-5)  # timm's

    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    def test_sim_pool_symbolic_scores(self, data_format, keepdims):
        """`compute_output_spec` for both forms, in a functional model."""
        shape = (None, 5, 4, 6) if data_format == "channels_last" else (None, 6, 5, 4)
        inputs = keras.Input(shape[1:])

        def layer():
            return kgp.GlobalSimPooling(
                num_heads=3, data_format=data_format, keepdims=keepdims
            )

        pooled = layer()(inputs)
        both = layer()(inputs, return_attention_scores=True)
        assert tuple(pooled.shape) == layer().compute_output_shape(shape)
        assert tuple(both[0].shape) == tuple(pooled.shape)
        assert tuple(both[1].shape) == (None, 3, 5, 4)
        model = keras.Model(inputs, both)
        x = random_input((2, *shape[1:]), dtype="float32")
        out, scores = model(x)
        assert tuple(out.shape) == (2, *tuple(pooled.shape)[1:])
        assert tuple(scores.shape) == (2, 3, 5, 4)
        np.testing.assert_allclose(to_numpy(scores).sum(axis=(2, 3)), 1.0, rtol=1e-5)

    def test_trainable_r(self):
        fixed = kgp.GlobalLSEPooling(trainable_r=False)
        fixed(np.ones((1, 2, 2, 3), "float32"))
        assert fixed.trainable_weights == []
        assert [w.name for w in fixed.non_trainable_weights] == ["r"]
        assert kgp.GlobalLSEPooling().r == 10.0  # timm's LsePlus2d default

    def test_covariance_weights_and_defaults(self):
        layer = kgp.GlobalCovariancePooling(dim=5)
        layer(np.zeros((1, 7, 20), "float32"))
        assert [w.name for w in layer.trainable_weights] == ["kernel", "bias"]
        assert tuple(layer.kernel.shape) == (20, 5)
        plain = kgp.GlobalCovariancePooling(dim=None)
        assert plain.built and plain.weights == []
        default = kgp.GlobalCovariancePooling()
        assert (default.dim, default.iterations) == (256, 5)  # the authors'

    def test_trainable_p(self):
        fixed = kgp.GlobalGeMPooling(trainable_p=False)
        fixed(np.ones((1, 2, 2, 3), "float32"))
        assert fixed.trainable_weights == []
        assert len(fixed.non_trainable_weights) == 1


class TestRegistry:
    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_get_by_name(self, name):
        assert isinstance(make_pooling(name), kgp.POOLINGS[name])

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
            make_pooling(name, data_format=bad)

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

    @pytest.mark.parametrize("bad", [0, -1, 2.0, "8", True])
    def test_bad_covariance_dim(self, bad):
        with pytest.raises(ValueError, match="None or an integer >= 1. Received: dim="):
            kgp.GlobalCovariancePooling(dim=bad)

    @pytest.mark.parametrize("bad", [0, -1, 2.0, "5", None, True])
    def test_bad_covariance_iterations(self, bad):
        with pytest.raises(ValueError, match="integer >= 1. Received: iterations="):
            kgp.GlobalCovariancePooling(iterations=bad)

    def test_covariance_has_no_keepdims(self):
        with pytest.raises(ValueError, match="no `keepdims`.*Received: keepdims=False"):
            kgp.GlobalCovariancePooling(keepdims=False)

    def test_covariance_without_dim_needs_known_channels(self):
        with pytest.raises(ValueError, match=r"dim=None.*known number of channels"):
            kgp.GlobalCovariancePooling(dim=None)(keras.Input((None, None, None)))

    @pytest.mark.parametrize("bad", [0, -1e-3])
    def test_bad_eps(self, bad):
        with pytest.raises(ValueError, match="Received: eps="):
            kgp.GlobalGeMPooling(eps=bad)

    @pytest.mark.parametrize("bad", [0, -1, 2.0, "2", None, True])
    def test_bad_num_heads(self, bad):
        with pytest.raises(ValueError, match="integer >= 1. Received: num_heads="):
            kgp.GlobalSimPooling(num_heads=bad)

    @pytest.mark.parametrize("heads, channels", [(3, 4), (8, 12), (2, 1)])
    def test_heads_must_divide_the_channels(self, heads, channels):
        layer = kgp.GlobalSimPooling(num_heads=heads)
        message = rf"divisible by `num_heads`.*num_heads={heads}, channels={channels}"
        with pytest.raises(ValueError, match=message):
            layer(np.zeros((2, 5, channels), "float32"))
        with pytest.raises(ValueError, match=message):
            kgp.GlobalSimPooling(num_heads=heads)(keras.Input((5, channels)))

    @pytest.mark.parametrize("bad", [0, 0.0, -2.0, float("nan"), float("inf"), "2"])
    def test_bad_gamma(self, bad):
        with pytest.raises(
            ValueError, match="None or a finite number > 0. Received: gamma="
        ):
            kgp.GlobalSimPooling(gamma=bad)

    @pytest.mark.parametrize("bad", [0, -1e-5, float("nan"), None, "1e-5"])
    def test_bad_layer_norm_epsilon(self, bad):
        with pytest.raises(
            ValueError, match="finite number > 0. Received: layer_norm_epsilon="
        ):
            kgp.GlobalSimPooling(layer_norm_epsilon=bad)

    @pytest.mark.parametrize("name", ["qkv_bias", "qk_norm"])
    @pytest.mark.parametrize("bad", ["yes", None, 2])
    def test_bad_sim_pool_flags(self, name, bad):
        with pytest.raises(
            ValueError, match=f"`{name}` must be a bool. Received: {name}={bad!r}"
        ):
            kgp.GlobalSimPooling(**{name: bad})

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"num_heads": 0}, "integer >= 1. Received: num_heads=0"),
            ({"latent_len": 1.5}, "integer >= 1. Received: latent_len=1.5"),
            ({"mlp_ratio": -1.0}, r"number >= 0 \(0 turns .*Received: mlp_ratio=-1.0"),
            ({"mlp_ratio": float("inf")}, "Received: mlp_ratio=inf"),
            ({"mlp_ratio": "4"}, "Received: mlp_ratio='4'"),
            ({"qkv_bias": "yes"}, "`qkv_bias` must be a bool. Received: qkv_bias="),
            ({"qk_norm": None}, "`qk_norm` must be a bool. Received: qk_norm=None"),
            ({"dropout": 1.0}, r"in \[0, 1\). Received: dropout=1.0"),
        ],
    )
    def test_bad_map_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            kgp.GlobalMultiHeadAttentionPooling(**kwargs)

    def test_map_channels_must_be_a_multiple_of_num_heads(self):
        layer = kgp.GlobalMultiHeadAttentionPooling(num_heads=4)
        with pytest.raises(ValueError, match="Received: channels=6, num_heads=4"):
            layer(np.zeros((1, 3, 6), "float32"))

    @pytest.mark.parametrize(
        "case",
        [
            "attention",
            "mixed_learned",
            "gated_attention",
            "covariance",
            "simpool",
            "map",
        ],
    )
    def test_unknown_channels_for_weights(self, case):
        with pytest.raises(ValueError, match="known number of channels"):
            make_layer(case)(keras.Input((None, None, None)))
