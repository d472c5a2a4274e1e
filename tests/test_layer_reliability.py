"""What outside testers found, checked on every backend.

- Sums over large maps: a float32 reduction can lose 1% at 2**20 positions
  (TensorFlow's CPU reduction does); every pooling must stay within a bound
  that does not grow with the map size, on every path.
- Masks must have the input's `(batch, *spatial)` shape: one that merely
  broadcasts is refused with both shapes named.
- An empty batch pools to an empty batch.
- GeM's `p` and mixed pooling's gate stay valid however hard training
  pushes, keep a gradient, and a weights file cannot load invalid values.
- Integer dtype policies are refused; integer inputs are cast; a built layer
  whose weights depend on the channel count refuses other channel counts.

Every expected value comes from float64 NumPy (`keras_globalpool.reference`),
`model.fit` or Keras's own input checks.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops
from layer_cases import (
    ATTENTION_CASES,
    DATA_FORMATS,
    LAYER_CASES,
    NOT_PER_CHANNEL,
    RANKS,
    gradients,
    input_shape,
    keepdims_kwargs,
    layer_norm,
    make_layer,
    make_pooling,
    pooled_size,
    query_axes,
    reference_forward,
    to_numpy,
)

import keras_globalpool as kgp

BACKEND = keras.backend.backend()
# float32's unit roundoff.
U32 = 2.0**-24
# The documented bound (`keras_globalpool.pool_ops`, "Accuracy"): the relative
# error of a pooled mean of same-sign float32 inputs is at most 32 unit
# roundoffs, whatever the number of positions. An unblocked float32 sum
# misses it by far at 2**16 positions and more on TensorFlow.
SUM_RTOL = 32 * U32
# GeM's floor on `p` and LSE's on `r` (their docstrings).
P_FLOOR = 1e-3
R_FLOOR = 1e-3


def _relative_error(out, expected):
    out = np.asarray(out, np.float64)
    return float(np.max(np.abs(out - expected) / np.abs(expected)))


def _biased_input(shape, seed=0):
    """Values in [100, 101): a large common part that a naive sum rounds away."""
    return (np.random.default_rng(seed).random(shape) + 100.0).astype("float32")


def _float32_layer(case, shape, **kwargs):
    """A built float32 layer, with `p=1` for GeM (so it is a mean too)."""
    if case == "gem":
        layer = kgp.GlobalGeMPooling(p=1.0, **kwargs)
    else:
        layer = make_layer(case, **kwargs)
    layer.build(shape)
    return layer


ACCURACY_CASES = [
    "avg",
    "mixed",
    "mixed_mean",
    "attention",
    "gem",
    "lse",
    "gated_attention",
]
# torch.compile takes about 20 s per model on CPU: torch runs uncompiled.
JIT_COMPILE = [False] if BACKEND == "torch" else [False, True]


class TestAccuracyAtAnySize:
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("positions", [49, 4096, 2**16, 2**20])
    @pytest.mark.parametrize("case", ACCURACY_CASES)
    def test_1d_eager(self, case, positions, data_format):
        shape = input_shape(3, data_format, batch=1, spatial=(positions,))
        x = _biased_input(shape)
        layer = _float32_layer(case, shape, data_format=data_format)
        expected = reference_forward(layer, x.astype(np.float64))
        error = _relative_error(to_numpy(layer(x)), expected)
        assert error <= SUM_RTOL, f"relative error {error:.3g} at n={positions}"

    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("size", [7, 8, 28, 100, 512, 1024])
    @pytest.mark.parametrize("case", ACCURACY_CASES)
    def test_2d_eager(self, case, size, data_format):
        """Static 2D maps: on TensorFlow, `channels_last` ones of at most 64
        positions take the average-pool fast path."""
        shape = input_shape(4, data_format, batch=1, spatial=(size, size))
        x = _biased_input(shape, seed=1)
        layer = _float32_layer(case, shape, data_format=data_format)
        expected = reference_forward(layer, x.astype(np.float64))
        error = _relative_error(to_numpy(layer(x)), expected)
        assert error <= SUM_RTOL, f"relative error {error:.3g} at {size}x{size}"

    @pytest.mark.parametrize("jit_compile", JIT_COMPILE)
    @pytest.mark.parametrize("static", [True, False])
    @pytest.mark.parametrize("shape", [(1, 2**20, 4), (1, 512, 512, 4)])
    @pytest.mark.parametrize("case", ACCURACY_CASES)
    def test_compiled_model(self, case, shape, static, jit_compile):
        """`predict`, with the spatial sizes known or unknown when compiled,
        and under XLA, which would merge the levels of a plain blocked sum."""
        spatial = shape[1:-1] if static else (None,) * (len(shape) - 2)
        inputs = keras.Input((*spatial, shape[-1]))
        layer = _float32_layer(case, shape)
        model = keras.Model(inputs, layer(inputs))
        model.compile(jit_compile=jit_compile)
        x = _biased_input(shape, seed=2)
        expected = reference_forward(layer, x.astype(np.float64))
        out = model.predict(x, verbose=0)
        assert _relative_error(out, expected) <= SUM_RTOL

    @pytest.mark.parametrize("positions", [3, 2**20 + 7])
    def test_mixed_signs(self, positions):
        """Cancelling values: the error is bounded relative to the mean of |x|."""
        x = np.random.default_rng(3).normal(size=(2, positions, 3)).astype("float32")
        out = to_numpy(kgp.GlobalAveragePooling()(x))
        exact = x.astype(np.float64)
        error = np.abs(out - exact.mean(axis=1)) / np.abs(exact).mean(axis=1)
        assert np.max(error) <= SUM_RTOL

    @pytest.mark.parametrize(
        "policy, rtol", [("mixed_float16", 2.0**-11), ("mixed_bfloat16", 2.0**-8)]
    )
    @pytest.mark.parametrize("shape", [(1, 2**20, 4), (1, 512, 512, 4)])
    @pytest.mark.parametrize("case", ACCURACY_CASES)
    def test_16_bit_policies_sum_in_float32(self, case, shape, policy, rtol):
        """The input rounded to 16 bits, summed in float32: only the output's
        own rounding (half a 16-bit ulp) and the float32 bound remain."""
        layer = _float32_layer(case, shape, dtype=policy)
        compute_dtype = policy.split("_")[1]
        x = ops.cast(_biased_input(shape, seed=4), compute_dtype)
        seen = to_numpy(x, "float64")
        expected = reference_forward(layer, seen)
        out = layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
        assert _relative_error(to_numpy(out, "float64"), expected) <= rtol + SUM_RTOL

    def test_blocked_sum_matches_numpy(self):
        x = _biased_input((2, 3, 1000, 70), seed=5)
        for axes in [(1,), (2,), (1, 2), (2, 3), (1, 2, 3)]:
            out = to_numpy(kgp.pool_ops.blocked_sum(x, axes))
            expected = x.astype(np.float64).sum(axis=axes)
            assert _relative_error(out, expected) <= SUM_RTOL, axes

    @pytest.mark.parametrize("positions", [49, 2**16, 2**20])
    def test_sim_pool_with_equal_weights(self, positions):
        """Keys that do not vary give equal weights: SimPool is then the mean
        of the layer-normalized map, here in (0, 2), whose blocked sum keeps
        the bound. Measured: at most 2 unit roundoffs, up to 2**20 positions."""
        x = _biased_input((1, positions, 4), seed=7)
        layer = kgp.GlobalSimPooling()
        layer.build(x.shape)
        layer.norm_gamma.assign(np.full(4, 0.5, "float32"))
        layer.norm_beta.assign(np.ones(4, "float32"))
        layer.key_kernel.assign(np.zeros((4, 4), "float32"))
        expected = reference_forward(layer, x.astype(np.float64))
        assert _relative_error(to_numpy(layer(x)), expected) <= SUM_RTOL

    @pytest.mark.parametrize("offset", [1e2, 1e4])
    def test_layer_norm_of_channels_that_agree_to_many_digits(self, offset):
        """Channels `offset + 0.01 z`: the float32 mean is off by a roundoff of
        the offset, which the plain formula leaves in every normalized value
        (5,900 unit roundoffs at 1e2, 920,000 at 1e4); centred twice, the
        error is a few (measured: 1.5)."""
        rng = np.random.default_rng(8)
        x = (offset + 1e-2 * rng.normal(size=(64, 16))).astype("float32")
        ones, zeros = np.ones(16, "float32"), np.zeros(16, "float32")
        out = to_numpy(kgp.pool_ops.layer_norm(x, ones, zeros))
        exact = layer_norm(x)
        assert np.max(np.abs(out - exact)) <= 8 * U32 * np.max(np.abs(exact))

    @pytest.mark.parametrize("positions", [49, 2**16])
    def test_covariance(self, positions):
        """Values in [100, 101): the covariance is centered first (a float32
        `E[x x^T] - m m^T` loses every digit), and its sum over positions is
        blocked. The error is relative to the largest output, as entries of
        the root may be near 0; measured: at most 4.2 unit roundoffs, eager
        and compiled, up to 2**20 positions."""
        x = _biased_input((1, positions, 4), seed=6)
        out = to_numpy(kgp.GlobalCovariancePooling(dim=None)(x))
        expected = kgp.reference.covariance_pool(x.astype(np.float64))
        error = np.max(np.abs(out - expected))
        assert error <= SUM_RTOL * np.max(np.abs(expected))


# === Masks ===

# (input shape, mask shape): each mask has the wrong shape for its input.
BAD_MASKS = [
    ((1, 5, 3), (1, 5, 1)),  # broadcasts: used to give a (1, 5, 3) output
    ((2, 5, 3), (2, 5, 1)),
    ((2, 5, 3), (2, 4)),  # wrong length
    ((2, 5, 3), (2, 6)),
    ((2, 5, 3), (2,)),  # wrong rank
    ((2, 5, 3), (2, 5, 3)),
    ((2, 5, 3), (3, 5)),  # wrong batch
    ((2, 5, 3), (1, 5)),
    ((2, 4, 4, 3), (2, 4)),
    ((2, 4, 4, 3), (2, 16)),
    ((2, 4, 4, 3), (2, 4, 5)),
]


class TestMaskShapes:
    @pytest.mark.parametrize("shapes", BAD_MASKS, ids=str)
    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_bad_mask_is_refused_eagerly(self, name, shapes):
        shape, mask_shape = shapes
        x = np.ones(shape, "float32")
        mask = np.ones(mask_shape, bool)
        with pytest.raises(ValueError) as info:
            make_pooling(name)(x, mask=mask)
        message = str(info.value)
        assert "`mask`" in message
        assert f"mask.shape={tuple(mask_shape)}" in message
        assert f"inputs.shape={tuple(shape)}" in message

    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_bad_mask_is_refused_in_a_functional_model(self, name):
        features = keras.Input((5, 3))
        mask = keras.Input((4,), dtype="bool")
        with pytest.raises(ValueError, match=r"mask\.shape=\(None, 4\)"):
            make_pooling(name)(features, mask=mask)

    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_good_mask_matches_reference(self, name, data_format):
        shape = input_shape(4, data_format, batch=2, spatial=(3, 4))
        x = np.random.default_rng(6).random(shape)
        mask = np.random.default_rng(7).random((2, 3, 4)) < 0.6
        mask[:, 0, 0] = True
        layer = make_pooling(name, data_format=data_format, dtype="float64")
        out = to_numpy(layer(x, mask=mask))
        expected = reference_forward(layer, x, mask)
        # An entry of a covariance's root may be near 0: its rounding error
        # is relative to the largest entry.
        atol = 1e-13 * np.max(np.abs(expected)) if name in NOT_PER_CHANNEL else 0.0
        np.testing.assert_allclose(out, expected, rtol=1e-10, atol=atol)

    def test_channels_first_mask_is_spatial(self):
        x = np.ones((2, 3, 5), "float32")  # 3 channels, 5 steps
        layer = kgp.GlobalAveragePooling(data_format="channels_first")
        assert tuple(layer(x, mask=np.ones((2, 5), bool)).shape) == (2, 3)
        with pytest.raises(ValueError, match=r"mask\.shape=\(2, 3\)"):
            layer(x, mask=np.ones((2, 3), bool))


# === Empty batches ===


def _out_shape(layer, shape):
    return tuple(layer.compute_output_shape(shape))


class TestEmptyBatch:
    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("case", sorted(LAYER_CASES))
    def test_eager(self, case, rank, data_format, keepdims):
        shape = input_shape(rank, data_format, batch=0)
        kwargs = keepdims_kwargs(case, keepdims)
        layer = make_layer(case, data_format=data_format, **kwargs)
        out = layer(np.zeros(shape, "float32"))
        assert tuple(out.shape) == _out_shape(layer, shape)
        assert tuple(out.shape)[0] == 0

    @pytest.mark.parametrize("case", sorted(LAYER_CASES))
    def test_with_a_mask(self, case):
        layer = make_layer(case)
        out = layer(np.zeros((0, 5, 4), "float32"), mask=np.ones((0, 5), bool))
        assert tuple(out.shape) == _out_shape(layer, (0, 5, 4))

    @pytest.mark.parametrize("case", ATTENTION_CASES)
    def test_attention_scores(self, case):
        layer = make_layer(case)
        _, scores = layer(
            np.zeros((0, 4, 4, 4), "float32"), return_attention_scores=True
        )
        assert tuple(scores.shape) == (0, *query_axes(layer), 4, 4)

    @pytest.mark.parametrize("static_spatial", [True, False])
    @pytest.mark.parametrize("case", sorted(LAYER_CASES))
    def test_in_a_model(self, case, static_spatial):
        """The model's call and the compiled predict function (Keras's
        `predict` itself cannot run zero batches)."""
        spatial = (4, 4) if static_spatial else (None, None)
        inputs = keras.Input((*spatial, 4))
        model = keras.Model(inputs, make_layer(case)(inputs))
        x = np.zeros((0, 4, 4, 4), "float32")
        expected = (0, pooled_size(case, 4))
        assert tuple(model(x).shape) == expected
        assert model.predict_on_batch(x).shape == expected

    @pytest.mark.parametrize("case", sorted(LAYER_CASES))
    def test_in_a_tf_function(self, case):
        if BACKEND != "tensorflow":
            pytest.skip("a graph with an unknown batch size is TensorFlow's")
        import tensorflow as tf

        layer = make_layer(case)
        layer.build((None, None, 4))
        pool = tf.function(layer, input_signature=[tf.TensorSpec((None, None, 4))])
        out = pool(tf.zeros((0, 5, 4)))
        assert tuple(out.shape) == (0, pooled_size(case, 4))


# === GeM's p and the mixed gate under training and loading ===


def _gem_model():
    inputs = keras.Input((6, 6, 2))
    layer = kgp.GlobalGeMPooling(p=3.0, name="gem")
    return keras.Model(inputs, layer(inputs)), layer


def _lse_model():
    inputs = keras.Input((6, 6, 2))
    layer = kgp.GlobalLSEPooling(r=10.0, name="lse")
    return keras.Model(inputs, layer(inputs)), layer


def _gate_model():
    inputs = keras.Input((6, 6, 2))
    layer = kgp.GlobalMixedPooling(mode="learned", name="mixed")
    return keras.Model(inputs, layer(inputs)), layer


def _positive_maps(seed=8):
    return np.random.default_rng(seed).uniform(0.1, 2.0, (8, 6, 6, 2)).astype("float32")


def _fit(model, target, learning_rate, steps=3):
    """SGD on the mean absolute error to a constant `target`."""
    x = _positive_maps()
    y = np.full((len(x), 2), target, "float32")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mae")
    model.fit(x, y, epochs=steps, batch_size=len(x), verbose=0)


def _value(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


class TestTrainedParametersStayValid:
    def test_gem_p_survives_a_huge_step_and_keeps_moving(self):
        model, layer = _gem_model()
        _fit(model, target=0.0, learning_rate=1e4)  # pushes p down, hard
        p = float(_value(layer.p_weight))
        assert math.isfinite(p) and p >= P_FLOOR, p
        grads = gradients(layer, _positive_maps(), np.ones((8, 2)))
        assert np.isfinite(grads[1]) and grads[1] != 0.0
        _fit(model, target=5.0, learning_rate=0.1)  # now pushes p up
        assert float(_value(layer.p_weight)) > p + 1e-3

    def test_gem_p_stays_finite_when_pushed_up(self):
        model, layer = _gem_model()
        _fit(model, target=100.0, learning_rate=1e4)
        p = float(_value(layer.p_weight))
        assert math.isfinite(p) and p > 3.0
        assert np.all(np.isfinite(to_numpy(model(_positive_maps()))))

    def test_lse_r_survives_a_huge_step_and_keeps_moving(self):
        model, layer = _lse_model()
        _fit(model, target=0.0, learning_rate=1e4)  # pushes r down, hard
        r = float(_value(layer.r_weight))
        assert math.isfinite(r) and r >= R_FLOOR, r
        assert np.all(np.isfinite(to_numpy(model(_positive_maps()))))
        grads = gradients(layer, _positive_maps(), np.ones((8, 2)))
        assert np.isfinite(grads[1]) and grads[1] > 0.0  # sharper is larger
        _fit(model, target=5.0, learning_rate=0.1)  # now pushes r up
        assert float(_value(layer.r_weight)) > r + 1e-3

    def test_lse_r_stays_finite_when_pushed_up(self):
        model, layer = _lse_model()
        _fit(model, target=100.0, learning_rate=1e4)
        r = float(_value(layer.r_weight))
        assert math.isfinite(r) and r > 10.0
        out = to_numpy(model(_positive_maps()))
        assert np.all(np.isfinite(out))
        assert np.all(out <= _positive_maps().max(axis=(1, 2)))

    @pytest.mark.parametrize("direction", ["up", "down"])
    def test_mixed_gate_stays_in_unit_interval_and_keeps_moving(self, direction):
        # A lower target favours the mean (gate 1), a higher the max (gate 0).
        targets = {"up": (0.0, 5.0), "down": (5.0, 0.0)}[direction]
        model, layer = _gate_model()
        _fit(model, target=targets[0], learning_rate=1e4)
        gate = _value(layer.gate)
        assert np.all((gate >= 0.0) & (gate <= 1.0)), gate
        np.testing.assert_array_equal(gate, 1.0 if direction == "up" else 0.0)
        _fit(model, target=targets[1], learning_rate=0.1)
        moved = _value(layer.gate)
        assert np.all(moved < 1.0) if direction == "up" else np.all(moved > 0.0)

    @pytest.mark.parametrize("case", ["gem", "lse", "mixed_learned"])
    def test_constraint_is_serializable(self, case):
        layer = make_layer(case)
        layer.build((None, 4, 4, 3))
        constraint = layer.trainable_weights[0].constraint
        config = keras.saving.serialize_keras_object(constraint)
        name = type(constraint).__name__
        assert config["registered_name"] == f"keras_globalpool>{name}"
        restored = keras.saving.deserialize_keras_object(config)
        assert type(restored) is type(constraint)
        assert restored.get_config() == constraint.get_config()


BAD_P = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0]
BAD_GATE = [float("nan"), float("inf"), float("-inf")]


def _poisoned(make, weight, value):
    model, layer = make()
    variable = getattr(layer, weight)
    variable.assign(np.full(variable.shape, value, "float32"))
    return model


class TestLoadedParametersAreChecked:
    @pytest.mark.parametrize("bad", BAD_P)
    def test_gem_weights_file(self, tmp_path, bad):
        path = tmp_path / "gem.weights.h5"
        _poisoned(_gem_model, "p_weight", bad).save_weights(path)
        fresh, layer = _gem_model()
        with pytest.raises(ValueError, match=rf"'gem'.*`p`.*Received: p={bad}"):
            fresh.load_weights(path)
        assert float(_value(layer.p_weight)) == 3.0  # the failed load changed nothing

    @pytest.mark.parametrize("bad", BAD_P)
    def test_gem_keras_file(self, tmp_path, bad):
        path = tmp_path / "gem.keras"
        _poisoned(_gem_model, "p_weight", bad).save(path)
        with pytest.raises(ValueError, match=rf"`p`.*Received: p={bad}"):
            keras.models.load_model(path)

    @pytest.mark.parametrize("bad", BAD_P)
    def test_lse_weights_file(self, tmp_path, bad):
        path = tmp_path / "lse.weights.h5"
        _poisoned(_lse_model, "r_weight", bad).save_weights(path)
        fresh, layer = _lse_model()
        with pytest.raises(ValueError, match=rf"'lse'.*`r`.*Received: r={bad}"):
            fresh.load_weights(path)
        assert float(_value(layer.r_weight)) == 10.0  # the failed load changed nothing

    @pytest.mark.parametrize("bad", BAD_P)
    def test_lse_keras_file(self, tmp_path, bad):
        path = tmp_path / "lse.keras"
        _poisoned(_lse_model, "r_weight", bad).save(path)
        with pytest.raises(ValueError, match=rf"`r`.*Received: r={bad}"):
            keras.models.load_model(path)

    def test_lse_r_below_the_floor_is_used_as_the_floor(self):
        x = _positive_maps()
        model, layer = _lse_model()
        layer.r_weight.assign(1e-9)
        floored = to_numpy(model(x))
        layer.r_weight.assign(R_FLOOR)
        np.testing.assert_array_equal(floored, to_numpy(model(x)))

    @pytest.mark.parametrize("bad", BAD_GATE)
    def test_mixed_gate_weights_file(self, tmp_path, bad):
        path = tmp_path / "mixed.weights.h5"
        _poisoned(_gate_model, "gate", bad).save_weights(path)
        fresh, layer = _gate_model()
        with pytest.raises(ValueError, match=r"'mixed'.*`gate`.*Received: gate="):
            fresh.load_weights(path)
        np.testing.assert_array_equal(_value(layer.gate), 0.5)

    @pytest.mark.parametrize("bad", BAD_GATE)
    def test_mixed_gate_keras_file(self, tmp_path, bad):
        path = tmp_path / "mixed.keras"
        _poisoned(_gate_model, "gate", bad).save(path)
        with pytest.raises(ValueError, match=r"`gate`.*Received: gate="):
            keras.models.load_model(path)

    def test_attention_kernel_with_nan(self, tmp_path):
        inputs = keras.Input((5, 4))
        layer = kgp.GlobalAttentionPooling(name="attention")
        model = keras.Model(inputs, layer(inputs))
        layer.hidden_kernel.assign(np.full((4, 1), np.nan, "float32"))
        model.save(tmp_path / "attention.keras")
        with pytest.raises(ValueError, match=r"`hidden_kernel`.*finite"):
            keras.models.load_model(tmp_path / "attention.keras")

    @pytest.mark.parametrize(
        "make, weight",
        [(_gem_model, "p_weight"), (_lse_model, "r_weight"), (_gate_model, "gate")],
    )
    def test_valid_values_still_load(self, tmp_path, make, weight):
        model, layer = make()
        value = 0.25
        getattr(layer, weight).assign(
            np.full(getattr(layer, weight).shape, value, "float32")
        )
        model.save(tmp_path / "good.keras")
        loaded = keras.models.load_model(tmp_path / "good.keras")
        x = _positive_maps()
        np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), rtol=1e-6)


# === Dtypes and input specs ===


class TestDtypesAndInputSpecs:
    @pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "int16", "bool"])
    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_integer_dtype_policy_is_refused(self, name, dtype):
        with pytest.raises(ValueError, match=rf"floating.*Received: dtype='{dtype}'"):
            make_pooling(name, dtype=dtype)

    @pytest.mark.parametrize(
        "dtype",
        [
            "float16",
            "bfloat16",
            "float32",
            "float64",
            "mixed_float16",
            "mixed_bfloat16",
        ],
    )
    @pytest.mark.parametrize("name", sorted(kgp.POOLINGS))
    def test_float_dtype_policies_are_accepted(self, name, dtype):
        layer = make_pooling(name, dtype=dtype)
        out = layer(np.ones((2, 3, 4), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == dtype.split("_")[-1]

    @pytest.mark.parametrize("dtype", ["int32", "int64", "uint8"])
    @pytest.mark.parametrize("case", sorted(LAYER_CASES))
    def test_integer_inputs_are_cast(self, case, dtype):
        x = np.random.default_rng(9).integers(0, 50, (2, 5, 4)).astype(dtype)
        layer = make_layer(case, dtype="float64")
        out = layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == "float64"
        np.testing.assert_allclose(
            to_numpy(out), reference_forward(layer, x.astype(np.float64)), rtol=1e-10
        )

    @pytest.mark.parametrize(
        "case, data_format, shape, other",
        [
            ("attention", "channels_last", (2, 5, 4), (2, 5, 5)),
            ("attention", "channels_first", (2, 4, 5), (2, 6, 5)),
            ("gated_attention", "channels_last", (2, 5, 4), (2, 5, 5)),
            ("gated_attention_ungated", "channels_first", (2, 4, 5), (2, 6, 5)),
            ("simpool", "channels_last", (2, 5, 4), (2, 5, 5)),
            ("simpool_gamma", "channels_first", (2, 4, 5), (2, 6, 5)),
            ("mixed_learned", "channels_last", (2, 3, 3, 4), (2, 3, 3, 2)),
        ],
    )
    def test_other_channel_count_is_refused(self, case, data_format, shape, other):
        layer = make_layer(case, data_format=data_format)
        layer(np.ones(shape, "float32"))
        with pytest.raises(ValueError) as info:
            layer(np.ones(other, "float32"))
        message = str(info.value)
        assert "value 4" in message and str(other) in message

    @pytest.mark.parametrize("case", ["avg", "max", "mixed", "gem", "lse"])
    def test_weightless_layers_take_any_rank_and_channels_once_built(self, case):
        layer = make_layer(case, dtype="float64")
        layer(np.ones((2, 5, 4)))
        x = np.random.default_rng(10).random((2, 3, 3, 7))
        np.testing.assert_allclose(
            to_numpy(layer(x)), reference_forward(layer, x), rtol=1e-10
        )

    @pytest.mark.parametrize("shape", [(2, 4), (2, 2, 2, 2, 2, 4)])
    @pytest.mark.parametrize("case", sorted(LAYER_CASES))
    def test_built_layer_refuses_wrong_rank(self, case, shape):
        layer = make_layer(case)
        layer(np.ones((2, 3, 4), "float32"))
        with pytest.raises(ValueError, match=r"ndim"):
            layer(np.ones(shape, "float32"))
