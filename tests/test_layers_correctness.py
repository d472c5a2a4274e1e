"""Values and gradients against the NumPy reference and Keras's built-ins."""

import keras
import ml_dtypes
import numpy as np
import pytest
from layer_cases import (
    DATA_FORMATS,
    LAYER_CASES,
    NOT_PER_CHANNEL,
    RANKS,
    call,
    gradients,
    input_shape,
    keepdims_kwargs,
    make_layer,
    random_input,
    randomize_weights,
    reference_attention,
    reference_forward,
    sim_pool_arguments,
    sim_pool_values,
    to_numpy,
)

import keras_globalpool as kgp
from keras_globalpool import reference

BUILTINS = {
    ("avg", 3): keras.layers.GlobalAveragePooling1D,
    ("avg", 4): keras.layers.GlobalAveragePooling2D,
    ("avg", 5): keras.layers.GlobalAveragePooling3D,
    ("max", 3): keras.layers.GlobalMaxPooling1D,
    ("max", 4): keras.layers.GlobalMaxPooling2D,
    ("max", 5): keras.layers.GlobalMaxPooling3D,
}


def _built(case, shape, **kwargs):
    layer = make_layer(case, dtype="float64", **kwargs)
    layer.build(shape)
    randomize_weights(layer)
    return layer


def _steps_mask(batch, steps, seed=3):
    """A 1D mask with a few valid steps per row, one row fully valid."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[0] = steps
    return np.arange(steps)[None, :] < lengths[:, None]


class TestCorrectness:
    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_matches_reference(self, case, rank, data_format, keepdims):
        shape = input_shape(rank, data_format, batch=3)
        keepdims = keepdims_kwargs(case, keepdims)
        layer = _built(case, shape, data_format=data_format, **keepdims)
        x = random_input(shape)
        out = layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == "float64"
        np.testing.assert_allclose(
            to_numpy(out), reference_forward(layer, x), rtol=1e-10, atol=1e-12
        )

    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("name", ["avg", "max"])
    def test_matches_keras_builtin(self, name, rank, data_format, keepdims):
        shape = input_shape(rank, data_format, batch=3)
        x = random_input(shape, dtype="float32")
        builtin = BUILTINS[(name, rank)](data_format=data_format, keepdims=keepdims)
        ours = kgp.get(name, data_format=data_format, keepdims=keepdims)
        np.testing.assert_allclose(ours(x), builtin(x), rtol=1e-6, atol=1e-6)

    def test_avg_equals_hand_computed_mean(self):
        x = np.arange(12, dtype="float32").reshape(1, 2, 3, 2)
        # channel 0 holds 0, 2, ..., 10 and channel 1 holds 1, 3, ..., 11.
        np.testing.assert_allclose(kgp.GlobalAveragePooling()(x), [[5.0, 6.0]])

    def test_mixed_concat_layout(self):
        x = random_input((2, 3, 4, 5), dtype="float32")
        out = np.asarray(kgp.GlobalMixedPooling(data_format="channels_first")(x))
        np.testing.assert_allclose(out[:, :3], x.mean(axis=(2, 3)), rtol=1e-6)
        np.testing.assert_allclose(out[:, 3:], x.max(axis=(2, 3)), rtol=1e-6)


class TestMasks:
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_mask_matches_reference(self, case, data_format):
        shape = input_shape(3, data_format, batch=4, spatial=(7,))
        layer = _built(case, shape, data_format=data_format)
        x = random_input(shape)
        mask = _steps_mask(4, 7)
        np.testing.assert_allclose(
            to_numpy(layer(x, mask=mask)),
            reference_forward(layer, x, mask),
            rtol=1e-10,
            atol=1e-12,
        )

    @pytest.mark.parametrize("fill", [0.0, 1e30, -1e30, np.inf, np.nan])
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_padded_steps_never_change_the_result(self, case, fill):
        """Embedding(mask_zero=True): the padding row may hold anything."""
        tokens = np.array([[3, 1, 2, 0, 0, 0], [1, 1, 1, 1, 2, 3], [2, 0, 0, 0, 0, 0]])
        inputs = keras.Input((None,), dtype="int32")
        embedding = keras.layers.Embedding(4, 6, mask_zero=True)
        model = keras.Model(inputs, make_layer(case)(embedding(inputs)))
        table = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
        table[0] = fill
        embedding.embeddings.assign(table)
        padded = to_numpy(model(tokens))
        for i, length in enumerate([3, 6, 1]):
            alone = to_numpy(model(tokens[i : i + 1, :length]))[0]
            np.testing.assert_allclose(padded[i], alone, rtol=1e-5, atol=1e-6)
        assert np.all(np.isfinite(padded))

    @pytest.mark.parametrize("dtype", ["float32", "mixed_float16", "mixed_bfloat16"])
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_fully_masked_row_gives_zeros(self, case, dtype):
        layer = make_layer(case, dtype=dtype)
        # Not constant, and of both signs: a covariance pooling gives zeros
        # for constant rows, and for the channels its ReLU zeroes.
        x = random_input((2, 5, 4), dtype="float32")
        mask = np.array([[False] * 5, [True] * 5])
        out = layer(x, mask=mask)
        grads = gradients(layer, x, np.ones(out.shape), mask)
        np.testing.assert_array_equal(to_numpy(out, "float32")[0], 0.0)
        valid = to_numpy(out, "float32")[1]
        # Not per channel: an entry of the covariance's root may be 0.
        nonzero = np.any if case in NOT_PER_CHANNEL else np.all
        assert nonzero(valid != 0.0)
        for grad in grads:
            assert np.all(np.isfinite(np.asarray(grad, "float32")))


class TestDtypes:
    @pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_large_maps_stay_finite_and_accurate(self, case, policy):
        """128x128 activations in the hundreds: a 16-bit sum would overflow."""
        x = np.random.default_rng(0).uniform(100.0, 900.0, size=(2, 128, 128, 8))
        layer = make_layer(case, dtype=policy)
        out = layer(x.astype("float32"))
        compute_dtype = policy.split("_")[1]
        assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
        # The layer sees the input rounded to 16 bits; the rest must be exact
        # up to the final rounding of the output.
        seen = np.asarray(keras.ops.cast(keras.ops.cast(x, compute_dtype), "float64"))
        exact_layer = make_layer(case, dtype="float64")
        exact_layer.build(x.shape)
        exact_layer.set_weights(layer.get_weights())
        exact = to_numpy(exact_layer(seen))
        rtol = 8e-3 if compute_dtype == "bfloat16" else 1e-3
        # An output below the 16-bit type's smallest normal is rounded to its
        # subnormal spacing; covariance's root, a matrix function, is accurate
        # relative to each sample's largest entry, not entry by entry.
        scale = np.abs(exact)
        if case in NOT_PER_CHANNEL:
            scale = np.max(scale, axis=-1, keepdims=True)
        bound = rtol * scale + float(ml_dtypes.finfo(compute_dtype).smallest_subnormal)
        error = np.abs(to_numpy(out, "float64") - exact)
        assert np.all(error <= bound), np.max(error / bound)

    @pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
    @pytest.mark.parametrize("masked", [False, True])
    def test_mixed_max_half_is_exact_in_16_bits(self, policy, masked):
        """Mixed takes a 16-bit map's max in 16 bits on jax and torch, of its
        float32 copy on TensorFlow: both are the exact max, with the
        gradient of `GlobalMaxPooling`, which takes it in 16 bits."""
        compute_dtype = policy.split("_")[1]
        rng = np.random.default_rng(5)
        x = (100.0 * rng.normal(size=(3, 6, 5, 4))).astype("float32")
        mask = rng.random((3, 6, 5)) < 0.5 if masked else np.ones((3, 6, 5), bool)
        if masked:
            mask[1] = False  # a fully masked sample pools to zeros
        seen = np.asarray(keras.ops.cast(keras.ops.cast(x, compute_dtype), "float64"))
        expected = np.where(mask[..., None], seen, -np.inf).max(axis=(1, 2))
        expected[~np.isfinite(expected)] = 0.0
        given = mask if masked else None
        mixed = kgp.GlobalMixedPooling(dtype=policy)
        peak = to_numpy(mixed(x, mask=given), "float64")[:, 4:]
        np.testing.assert_array_equal(peak, expected)
        dy = rng.normal(size=(3, 4)).astype("float32")
        mixed_grad = gradients(mixed, x, np.concatenate([0 * dy, dy], -1), given)
        max_grad = gradients(kgp.GlobalMaxPooling(dtype=policy), x, dy, given)
        np.testing.assert_array_equal(
            np.asarray(mixed_grad[0], "float32"), np.asarray(max_grad[0], "float32")
        )

    def test_keras_masked_average_overflow_case(self):
        """Keras's GlobalAveragePooling1D returns inf here under float16."""
        x = np.full((1, 300, 2), 500.0, "float32")
        mask = np.arange(300)[None] < 250
        out = kgp.GlobalAveragePooling(dtype="mixed_float16")(x, mask=mask)
        np.testing.assert_allclose(to_numpy(out, "float32"), [[500.0, 500.0]])

    def test_gem_float16_large_values_and_zero_gradient(self):
        layer = kgp.GlobalGeMPooling(p=3.0, dtype="mixed_float16")
        out = layer(np.full((1, 4, 4, 2), 50.0, "float32"))
        np.testing.assert_allclose(to_numpy(out, "float32"), 50.0, rtol=1e-3)
        zeros = np.zeros((1, 4, 4, 2), "float32")
        grads = gradients(layer, zeros, np.ones((1, 2)))
        assert len(grads) == 2  # the input and p
        for grad in grads:
            assert np.all(np.isfinite(np.asarray(grad)))

    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_float64_computes_in_float64(self, case):
        x = 1.0 + 1e-12 * np.arange(2 * 3 * 3 * 2).reshape(2, 3, 3, 2)
        layer = _built(case, x.shape)
        out = layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == "float64"
        # A covariance sees only the differences, 1e-12 against values of 1:
        # float64 keeps 4 of their digits, float32 none.
        rtol = 1e-3 if case in NOT_PER_CHANNEL else 1e-14
        np.testing.assert_allclose(
            to_numpy(out), reference_forward(layer, x), rtol=rtol
        )


class TestLimits:
    def test_gem_p1_equals_average(self):
        x = np.abs(random_input((2, 5, 5, 3))) + 0.1
        gem = kgp.GlobalGeMPooling(p=1.0, dtype="float64")
        np.testing.assert_allclose(to_numpy(gem(x)), x.mean(axis=(1, 2)), rtol=1e-10)

    @pytest.mark.parametrize("policy", ["float32", "float64"])
    def test_lse_small_r_approaches_average(self, policy):
        # y = mean + r * var / 2 + O(r**2): the error is about r / 2.
        x = random_input((2, 5, 5, 3))
        lse = kgp.GlobalLSEPooling(r=1e-3, dtype=policy)
        out = to_numpy(lse(x.astype(policy)), "float64")
        mean = x.astype(policy).astype("float64").mean(axis=(1, 2))
        np.testing.assert_allclose(out, mean, atol=1e-3)
        assert np.all(out >= mean)  # LSE is never below the mean

    def test_lse_large_r_approaches_max(self):
        x = random_input((2, 5, 5, 3))
        lse = kgp.GlobalLSEPooling(r=1e4, dtype="float64")
        out = to_numpy(lse(x))
        peak = x.max(axis=(1, 2))
        assert np.all(out <= peak)
        # mean(exp(r (x - max))) >= 1 / n: at most log(25) / r below the max.
        assert np.all(out >= peak - np.log(25.0) / 1e4)

    def test_lse_float16_large_values(self):
        layer = kgp.GlobalLSEPooling(r=10.0, dtype="mixed_float16")
        x = np.random.default_rng(0).uniform(500.0, 900.0, (1, 64, 64, 2))
        out = to_numpy(layer(x.astype("float32")), "float32")
        assert np.all(np.isfinite(out))
        exact = reference.lse_pool(x.astype("float16"), r=10.0)
        np.testing.assert_allclose(out, exact, rtol=1e-3)

    def test_gem_large_p_approaches_max(self):
        x = np.abs(random_input((2, 5, 5, 3))) + 0.1
        gem = kgp.GlobalGeMPooling(p=500.0, dtype="float64")
        out = to_numpy(gem(x))
        peak = x.max(axis=(1, 2))
        assert np.all(out <= peak + 1e-12)
        np.testing.assert_allclose(out, peak, rtol=0.01)

    @pytest.mark.parametrize(
        "gate, expected", [(1.0, "mean"), (0.0, "max"), (3.0, "mean")]
    )
    def test_learned_gate_endpoints(self, gate, expected):
        x = random_input((2, 4, 4, 3))
        layer = kgp.GlobalMixedPooling(mode="learned", dtype="float64")
        layer.build(x.shape)
        layer.gate.assign(np.full(3, gate))
        np.testing.assert_allclose(
            to_numpy(layer(x)), getattr(x, expected)(axis=(1, 2)), rtol=1e-12
        )

    @pytest.mark.parametrize("normalize", ["sigmoid", "softmax"])
    @pytest.mark.parametrize("rank", RANKS)
    def test_attention_is_convex(self, rank, normalize):
        shape = input_shape(rank, "channels_last", batch=3)
        layer = _built("attention", shape, normalize=normalize)
        layer.score_bias.assign([-80.0])  # sigmoids near 1e-35: no underflow to 0/0
        x = random_input(shape) * 100
        pooled, scores = map(to_numpy, layer(x, return_attention_scores=True))
        axes = tuple(range(1, rank - 1))
        assert np.all(pooled >= x.min(axis=axes) - 1e-9)
        assert np.all(pooled <= x.max(axis=axes) + 1e-9)
        assert scores.shape == shape[:-1]
        np.testing.assert_allclose(np.sum(scores, axis=axes), 1.0, rtol=1e-12)

    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    def test_attention_scores_match_reference(self, data_format):
        shape = input_shape(4, data_format)
        layer = _built("attention", shape, data_format=data_format)
        x = random_input(shape)
        scores = to_numpy(layer(x, return_attention_scores=True)[1])
        _, expected = reference.attention_pool(
            x,
            *[w.numpy() for w in layer.weights],
            normalize=layer.normalize,
            data_format=data_format,
        )
        np.testing.assert_allclose(scores, expected, rtol=1e-10)

    @pytest.mark.parametrize("case", ["gated_attention", "gated_attention_ungated"])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    def test_gated_attention_scores_match_reference(self, rank, data_format, case):
        shape = input_shape(rank, data_format, batch=3)
        layer = _built(case, shape, data_format=data_format)
        x = random_input(shape)
        mask = None
        if rank == 3:
            mask = _steps_mask(3, shape[1 if data_format == "channels_last" else 2])
        pooled, scores = map(
            to_numpy, layer(x, mask=mask, return_attention_scores=True)
        )
        expected_pooled, expected = reference_attention(layer, x, mask)
        np.testing.assert_allclose(pooled, expected_pooled, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-14)
        axes = tuple(range(1, rank - 1))
        np.testing.assert_allclose(np.sum(scores, axis=axes), 1.0, rtol=1e-12)

    def test_open_gate_is_the_ungated_attention(self):
        """With `sigmoid(U h + c)` = 1 everywhere, the gate changes nothing."""
        x = random_input((2, 7, 4))
        gated = _built("gated_attention", x.shape)
        ungated = _built("gated_attention_ungated", x.shape)
        gated.gate_bias.assign(np.full(3, 60.0))  # sigmoid(60) = 1 - 9e-27
        for name in ("hidden_kernel", "hidden_bias", "score_kernel"):
            getattr(ungated, name).assign(getattr(gated, name).numpy())
        np.testing.assert_allclose(to_numpy(gated(x)), to_numpy(ungated(x)), rtol=1e-14)

    @pytest.mark.parametrize("case", ["gated_attention", "gated_attention_ungated"])
    def test_gated_attention_is_convex(self, case):
        shape = (3, 4, 5, 6)
        layer = _built(case, shape)
        x = random_input(shape) * 300
        pooled = to_numpy(layer(x))
        assert np.all(pooled >= x.min(axis=(1, 2)) - 1e-9)
        assert np.all(pooled <= x.max(axis=(1, 2)) + 1e-9)


class TestCovariance:
    """Singular covariances, and features whose covariance float32 cannot hold."""

    @pytest.mark.parametrize("dim", [None, 3])
    def test_singular_covariance_has_finite_gradients(self, dim):
        x = random_input((4, 5, 4), dtype="float32")
        x[1, :, 2:] = 3.7  # two constant channels
        x[2] = 1.1  # every channel constant
        mask = np.ones((4, 5), bool)
        mask[3, 1:] = False  # a single valid position: trace 0
        layer = kgp.GlobalCovariancePooling(dim=dim)
        out = to_numpy(layer(x, mask=mask))
        np.testing.assert_array_equal(out[3], 0.0)
        expected = reference_forward(layer, x.astype(np.float64), mask)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        for grad in gradients(layer, x, np.ones(out.shape), mask):
            assert np.all(np.isfinite(grad))

    @pytest.mark.parametrize("scale", [2.0**-70, 2.0**100])
    def test_scales_with_its_input(self, scale):
        """`f(s x) = s f(x)` with the same gradient, where `s**2` under- or
        overflows float32."""
        x = random_input((2, 6, 4), dtype="float32")
        dy = random_input((2, 10), seed=3)
        layer = kgp.GlobalCovariancePooling(dim=None)
        scaled = to_numpy(layer(x * scale))
        np.testing.assert_allclose(scaled, to_numpy(layer(x)) * scale, rtol=1e-6)
        np.testing.assert_allclose(
            gradients(layer, x * scale, dy)[0], gradients(layer, x, dy)[0], rtol=1e-6
        )


class TestMultiHeadAttention:
    """What the "map" case leaves out: qk_norm, heads of several channels
    with a mask at every rank, and dropout."""

    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    def test_map_qk_norm_matches_reference(self, rank, data_format):
        shape = input_shape(rank, data_format, batch=3, channels=8)
        layer = _built("map", shape, data_format=data_format, qk_norm=True)
        x = random_input(shape)
        spatial = shape[1:-1] if data_format == "channels_last" else shape[2:]
        mask = np.random.default_rng(4).random((3, *spatial)) < 0.6
        mask[(slice(None), *(0,) * len(spatial))] = True  # one valid at least
        mask[2] = False  # but in this one: zeros
        pooled, scores = map(
            to_numpy, layer(x, mask=mask, return_attention_scores=True)
        )
        expected_pooled, expected = reference_attention(layer, x, mask)
        np.testing.assert_allclose(pooled, expected_pooled, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-14)
        assert scores.shape == (3, 2, 2, *spatial)
        axes = tuple(range(3, 3 + len(spatial)))
        np.testing.assert_allclose(np.sum(scores[:2], axis=axes), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(pooled[2], 0.0)
        np.testing.assert_array_equal(scores[2], 0.0)
        dy = random_input(pooled.shape, seed=9)
        grads = _gradients(layer, x, dy, mask)
        weights = {w.name: to_numpy(w) for w in layer.weights}
        expected_grads = reference.multi_head_attention_pool_grad(
            x,
            dy,
            num_heads=2,
            **weights,
            data_format=data_format,
            keepdims=False,
            mask=mask,
        )
        np.testing.assert_allclose(grads[0], expected_grads["x"], rtol=1e-9, atol=1e-12)
        for weight, grad in zip(layer.trainable_weights, grads[1:], strict=True):
            np.testing.assert_allclose(
                grad, expected_grads[weight.name], rtol=1e-9, atol=1e-12
            )

    def test_map_dropout_drops_the_projection_in_training_only(self):
        x = random_input((2, 5, 8))
        layer = kgp.GlobalMultiHeadAttentionPooling(
            num_heads=2, mlp_ratio=0.0, dropout=0.5, dtype="float64"
        )
        layer.build(x.shape)
        randomize_weights(layer)
        projected = to_numpy(layer(x))
        np.testing.assert_allclose(projected, reference_forward(layer, x), rtol=1e-10)
        dropped = to_numpy(layer(x, training=True))
        kept = dropped != 0
        assert kept.any() and not kept.all()
        np.testing.assert_allclose(dropped[kept], 2 * projected[kept], rtol=1e-12)


class TestFoldedProjections:
    """MAP and SimPool fold their queries into the key kernel (and MAP, on
    short maps, pools before the value projection) unless `qk_norm`: the
    folded path agrees with the plain one, values and gradients."""

    @pytest.mark.parametrize(
        "name, kwargs, spatial",
        [
            ("map", {"num_heads": 2, "qkv_bias": True}, (5, 4)),  # values folded
            ("map", {"num_heads": 2, "latent_len": 2}, (9, 8)),  # 72 > SUM_BLOCK
            ("map", {"num_heads": 1, "mlp_ratio": 0.0}, (7,)),
            ("simpool", {"num_heads": 2, "qkv_bias": True}, (5, 4)),
            ("simpool", {"gamma": 2.0}, (3, 4, 2)),
        ],
    )
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_folded_equals_plain(self, name, kwargs, spatial, dtype):
        shape = (3, *spatial, 8)
        x = random_input(shape, dtype=dtype)
        mask = np.random.default_rng(5).random((3, *spatial)) < 0.7
        mask[0] = True
        mask[2] = False
        folded = kgp.get(name, dtype=dtype, **kwargs)
        folded.build(shape)
        randomize_weights(folded)
        plain = kgp.get(name, dtype=dtype, **kwargs)
        plain.build(shape)
        plain.set_weights(folded.get_weights())
        plain.fold_projections = False
        dy = random_input((3, 8), seed=6, dtype=dtype)
        got = [to_numpy(folded(x, mask=mask)), *gradients(folded, x, dy, mask)]
        expected = [to_numpy(plain(x, mask=mask)), *gradients(plain, x, dy, mask)]
        # Relative to the largest value or gradient: a key bias's gradient is
        # 0 but for roundoff (the softmax cancels it), in both paths.
        scale = max(float(np.max(np.abs(e), initial=0.0)) for e in expected)
        atol = {"float32": 2e-6, "float64": 1e-13}[dtype] * scale
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=0, atol=atol)


class TestSimPool:
    """What the two "simpool" cases leave out: more heads and the options'
    other combinations, masks at every rank, and SimPool's limits."""

    OPTIONS = [
        {"num_heads": 1},
        {"num_heads": 2, "qk_norm": True},
        {"num_heads": 4, "qkv_bias": True, "gamma": 1.5},
        {"num_heads": 8, "qkv_bias": True, "qk_norm": True, "gamma": 3.0},
    ]

    @pytest.mark.parametrize("options", OPTIONS, ids=str)
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    def test_matches_reference_with_a_mask(self, rank, data_format, options):
        """Outputs, per-head scores and every gradient, with padded samples."""
        shape = input_shape(rank, data_format, batch=3, channels=8)
        # Both layouts of the output: keepdims with channels_first.
        common = {
            "data_format": data_format,
            "keepdims": data_format != "channels_last",
        }
        layer = _built("simpool", shape, **common, **options)
        x = random_input(shape)
        spatial = shape[1:-1] if data_format == "channels_last" else shape[2:]
        mask = np.random.default_rng(4).random((3, *spatial)) < 0.6
        mask[(slice(None), *(0,) * len(spatial))] = True  # one valid at least
        mask[2] = False  # and a fully masked sample
        pooled, scores = map(
            to_numpy, call(layer, x, mask=mask, return_attention_scores=True)
        )
        expected_pooled, expected = reference_attention(layer, x, mask)
        np.testing.assert_allclose(pooled, expected_pooled, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-14)
        assert scores.shape == (3, options["num_heads"], *spatial)
        axes = tuple(range(2, 2 + len(spatial)))
        np.testing.assert_allclose(np.sum(scores[:2], axis=axes), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(scores[2], 0.0)
        np.testing.assert_array_equal(pooled[2], 0.0)
        dy = random_input(pooled.shape, seed=9)
        grads = _gradients(layer, x, dy, mask)
        expected_grads = reference.sim_pool_grad(
            x, dy, **sim_pool_arguments(layer), **common, mask=mask
        )
        np.testing.assert_allclose(grads[0], expected_grads["x"], rtol=1e-9, atol=1e-12)
        names = [w.name for w in layer.trainable_weights]
        assert sorted(names) == sorted(expected_grads.keys() - {"x"})
        for name, grad in zip(names, grads[1:], strict=True):
            np.testing.assert_allclose(
                grad, expected_grads[name], rtol=1e-9, atol=1e-12, err_msg=name
            )

    def test_heads_pool_their_own_channels(self):
        """Head h weights channels h * d to (h + 1) * d, as timm's reshape."""
        x = random_input((2, 9, 6))
        layer = _built("simpool", x.shape, num_heads=3)
        pooled, scores = map(to_numpy, layer(x, return_attention_scores=True))
        values = reference.sim_pool(x, **sim_pool_arguments(layer))[0]
        np.testing.assert_allclose(pooled, values, rtol=1e-12)
        # Each head's two channels are its weighted sum of the normalized map.
        normalized = sim_pool_values(layer, x)
        for head in range(3):
            channels = slice(2 * head, 2 * head + 2)
            expected = np.einsum(
                "bn,bnc->bc", scores[:, head], normalized[..., channels]
            )
            np.testing.assert_allclose(pooled[:, channels], expected, rtol=1e-12)

    def test_uniform_weights_give_the_mean_of_the_normalized_map(self):
        """Keys that do not vary with the position weight them equally."""
        x = random_input((2, 4, 3, 8))
        layer = _built("simpool", x.shape, num_heads=2)
        layer.key_kernel.assign(np.zeros((8, 8)))
        pooled, scores = map(to_numpy, layer(x, return_attention_scores=True))
        np.testing.assert_allclose(scores, 1 / 12, rtol=1e-14)
        values = sim_pool_values(layer, x)
        np.testing.assert_allclose(pooled, values.mean(axis=(1, 2)), rtol=1e-12)

    @pytest.mark.parametrize("qk_norm", [False, True])
    def test_gamma_one_is_the_weighted_sum_shifted_by_the_minimum(self, qk_norm):
        """With gamma = 1 the power mean is sum(w * (v - min(v) + 1e-6))."""
        x = random_input((3, 7, 4))
        mask = _steps_mask(3, 7)
        plain = _built("simpool", x.shape, num_heads=2, qk_norm=qk_norm)
        powered = _built("simpool", x.shape, num_heads=2, qk_norm=qk_norm, gamma=1.0)
        powered.set_weights(plain.get_weights())
        values = sim_pool_values(plain, x)
        low = np.where(mask[..., None], values, np.inf).min(axis=1)
        # atol: a sample of one valid step gives 1e-6 from v - min(v) = 0,
        # and the layer's and NumPy's roundings of v differ by 1e-17.
        np.testing.assert_allclose(
            to_numpy(powered(x, mask=mask)),
            to_numpy(plain(x, mask=mask)) - low + 1e-6,
            rtol=1e-12,
            atol=1e-15,
        )

    def test_large_gamma_approaches_the_range(self):
        """The power mean tends to the largest shifted value, max - min + 1e-6:
        with 6 equal weights and gamma = 400, within a factor 6 ** (-1 / 400)."""
        x = random_input((2, 6, 4))
        layer = _built("simpool", x.shape, gamma=400.0)
        layer.key_kernel.assign(np.zeros((4, 4)))  # equal weights
        pooled = to_numpy(layer(x))
        normalized = sim_pool_values(layer, x)
        spread = normalized.max(axis=1) - normalized.min(axis=1) + 1e-6
        assert np.all(pooled <= spread * (1 + 1e-12))
        assert np.all(pooled >= spread * 6 ** (-1 / 400) * (1 - 1e-12))

    def test_mixed_precision_scores_are_float32_softmax(self):
        """Features in the hundreds: the float16 scores are the float32
        layer's, rounded, and each head's still sum to 1."""
        x = np.random.default_rng(0).uniform(100, 900, (2, 16, 16, 8))
        x = x.astype("float16").astype("float32")
        exact = make_layer("simpool_gamma")
        half = make_layer("simpool_gamma", dtype="mixed_float16")
        exact.build(x.shape)
        randomize_weights(exact)
        half.build(x.shape)
        half.set_weights(exact.get_weights())
        pooled, scores = half(x, return_attention_scores=True)
        assert keras.backend.standardize_dtype(scores.dtype) == "float16"
        expected_pooled, expected = map(
            to_numpy, exact(x, return_attention_scores=True)
        )
        np.testing.assert_allclose(
            to_numpy(scores, "float32"), expected, rtol=2e-3, atol=1e-7
        )
        np.testing.assert_allclose(
            to_numpy(pooled, "float32"), expected_pooled, rtol=2e-3, atol=1e-3
        )
        sums = to_numpy(scores, "float32").sum(axis=(2, 3))
        np.testing.assert_allclose(sums, 1.0, rtol=1e-2)


def _gradients(layer, x, dy, mask=None):
    return gradients(layer, x, dy, mask)


# Random directions per input and per weight in the finite-difference test.
DIRECTIONS = 3


class TestGradients:
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize(
        "rank, masked", [(3, False), (3, True), (4, False), (5, False)]
    )
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_gradients_match_finite_differences(self, case, rank, masked, data_format):
        shape = input_shape(rank, data_format)
        layer = _built(case, shape, data_format=data_format)
        x = random_input(shape)
        mask = (
            _steps_mask(shape[0], x.shape[1 if data_format == "channels_last" else 2])
            if masked
            else None
        )
        dy = random_input(tuple(layer.compute_output_shape(shape)), seed=9)
        analytic = _gradients(layer, x, dy, mask)
        weights = layer.trainable_weights
        values = [np.array(w.numpy()) for w in weights]

        def loss(inputs, weight_values):  # compiled on jax
            for weight, value in zip(weights, weight_values, strict=True):
                weight.assign(value)
            return float(np.sum(to_numpy(call(layer, inputs, mask=mask)) * dy))

        # Central differences along random directions, as jax's check_grads
        # takes them, in place of one pair of calls per element: directions
        # of the input, then of all the weights at once.
        rng = np.random.default_rng(3)
        step = 1e-6

        def check(name, origin, grads, loss_at):
            for _ in range(DIRECTIONS):
                directions = [rng.normal(size=np.shape(a)) for a in origin]
                up = loss_at([step * d for d in directions])
                down = loss_at([-step * d for d in directions])
                derivative = sum(
                    np.sum(g * d) for g, d in zip(grads, directions, strict=True)
                )
                np.testing.assert_allclose(
                    (up - down) / (2 * step),
                    derivative,
                    rtol=1e-6,
                    atol=1e-8,
                    err_msg=name,
                )

        check("input", [x], analytic[:1], lambda d: loss(x + d[0], values))
        if values:
            check(
                "weights",
                values,
                analytic[1:],
                lambda d: loss(x, [v + e for v, e in zip(values, d, strict=True)]),
            )
        loss(x, values)  # the layer's own weights back

    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_input_gradient_matches_reference_backward(self, case):
        shape = input_shape(4, "channels_last")
        layer = _built(case, shape)
        x = random_input(shape)
        dy = random_input(tuple(layer.compute_output_shape(shape)), seed=9)
        analytic = _gradients(layer, x, dy)
        np.testing.assert_allclose(
            analytic[0], reference_backward(layer, x, dy)["x"], rtol=1e-9, atol=1e-12
        )

    def test_max_ties_share_the_gradient(self):
        x = np.array([[[1.0], [3.0], [3.0], [2.0]]])
        grad = _gradients(kgp.GlobalMaxPooling(dtype="float64"), x, np.ones((1, 1)))[0]
        np.testing.assert_allclose(np.asarray(grad)[0, :, 0], [0.0, 0.5, 0.5, 0.0])
        np.testing.assert_allclose(
            reference.max_pool_grad(x, np.ones((1, 1)))["x"], np.asarray(grad)
        )

    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_gradient_flows_in_a_model(self, case):
        inputs = keras.Input((9, 9, 3))
        features = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
        outputs = keras.layers.Dense(2)(make_layer(case)(features))
        model = keras.Model(inputs, outputs)
        x = random_input((4, 9, 9, 3), dtype="float32")
        grads = gradients(model, x, random_input((4, 2), seed=5))[1:]
        assert len(grads) == len(model.trainable_variables)
        for variable, grad in zip(model.trainable_variables, grads, strict=True):
            assert np.all(np.isfinite(grad))
            if (case, variable.path.split("/")[-1]) in SOFTMAX_SHIFTS:
                # softmax is shift-invariant: this bias cannot change the output.
                np.testing.assert_allclose(grad, 0.0, atol=1e-6)
            else:
                assert np.any(np.asarray(grad) != 0), variable.path


# Biases that add the same to every logit of a query (MAP's keys' without
# qk_norm): they get no gradient.
SOFTMAX_SHIFTS = {
    ("attention_softmax", "score_bias"),
    ("map", "key_bias"),
    ("simpool_gamma", "key_norm_beta"),  # after qk_norm
}


def reference_backward(layer, x, dy):
    """The oracle's backward pass for `layer`, using its weights."""
    if isinstance(layer, kgp.GlobalCovariancePooling):
        weights = {}
        if layer.dim is not None:
            weights = {"kernel": layer.kernel.numpy(), "bias": layer.bias.numpy()}
        return reference.covariance_pool_grad(
            x,
            dy,
            **weights,
            iterations=layer.iterations,
            data_format=layer.data_format,
        )
    if isinstance(layer, kgp.ClassSpecificResidualAttention):
        return reference.csra_grad(
            x,
            dy,
            to_numpy(layer.kernel, "float64"),
            layer.temperatures,
            layer.lam,
            data_format=layer.data_format,
        )
    common = {"data_format": layer.data_format, "keepdims": layer.keepdims}
    if isinstance(layer, kgp.GlobalSimPooling):
        return reference.sim_pool_grad(x, dy, **sim_pool_arguments(layer), **common)
    if isinstance(layer, kgp.GlobalMultiHeadAttentionPooling):
        weights = {w.name: np.asarray(w.numpy()) for w in layer.weights}
        return reference.multi_head_attention_pool_grad(
            x, dy, num_heads=layer.num_heads, **weights, **common
        )
    if isinstance(layer, kgp.GlobalAveragePooling):
        return reference.avg_pool_grad(x, dy, **common)
    if isinstance(layer, kgp.GlobalMaxPooling):
        return reference.max_pool_grad(x, dy, **common)
    if isinstance(layer, kgp.GlobalMixedPooling):
        gate = layer.gate.numpy() if layer.mode == "learned" else None
        return reference.mixed_pool_grad(x, dy, mode=layer.mode, gate=gate, **common)
    if isinstance(layer, kgp.GlobalGeMPooling):
        p = float(layer.p_weight.numpy())
        return reference.gem_pool_grad(x, dy, p=p, eps=layer.eps, **common)
    if isinstance(layer, kgp.GlobalLSEPooling):
        r = float(layer.r_weight.numpy())
        return reference.lse_pool_grad(x, dy, r=r, **common)
    if isinstance(layer, kgp.GlobalGatedAttentionPooling):
        gate = {}
        if layer.gated:
            gate = {
                "gate_kernel": layer.gate_kernel.numpy(),
                "gate_bias": layer.gate_bias.numpy(),
            }
        return reference.gated_attention_pool_grad(
            x,
            dy,
            layer.hidden_kernel.numpy(),
            layer.hidden_bias.numpy(),
            layer.score_kernel.numpy(),
            **gate,
            **common,
        )
    return reference.attention_pool_grad(
        x, dy, *[w.numpy() for w in layer.weights], normalize=layer.normalize, **common
    )


class TestCompiled:
    @pytest.mark.parametrize("case", LAYER_CASES)
    def test_jit_compile_fit_and_predict(self, case):
        inputs = keras.Input((None, None, 4))
        outputs = keras.layers.Dense(3, activation="softmax")(make_layer(case)(inputs))
        model = keras.Model(inputs, outputs)
        # torch.compile takes about 20 s per model on CPU: torch fits uncompiled.
        model.compile(
            optimizer="adam",
            loss="sparse_categorical_crossentropy",
            jit_compile=keras.backend.backend() != "torch",
        )
        x = random_input((8, 6, 6, 4), dtype="float32")
        y = np.arange(8) % 3
        history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        np.testing.assert_allclose(
            model.predict(x, verbose=0), to_numpy(model(x)), rtol=1e-5, atol=1e-6
        )
