"""The NaN and Inf policy (README, "Reliability": "NaN, Inf and empty inputs").

- A NaN at a valid position propagates as in NumPy's `mean` and `max`: avg,
  max, mixed and GeM give NaN in exactly the channels that hold one. The
  attention weights are shared by all channels, so a NaN anywhere in a
  valid position makes that whole sample NaN, scores included.
- `inf` follows NumPy: the mean of `+inf` is `+inf`, of `+inf` and `-inf` NaN;
  the max of `+inf` is `+inf`. GeM clamps below `eps`, `-inf` included.
- Masked positions never matter, whatever they hold (test_layers_correctness).
- Finite inputs never give NaN attention weights, however large: the weights
  stay finite and sum to 1, even where the scoring branch overflows.
"""

import keras
import numpy as np
import pytest
import strategies
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_cases import (
    ATTENTION_CASES,
    LAYER_CASES,
    NOT_PER_CHANNEL,
    call,
    gradients,
    layer_norm,
    make_layer,
    random_input,
    randomize_weights,
    scores_per_query,
)

import keras_globalpool as kgp

NON_ATTENTION = [
    case
    for case in LAYER_CASES
    if case not in ATTENTION_CASES and case not in NOT_PER_CHANNEL
]
ATTENTION = list(ATTENTION_CASES)
# The attention cases whose output is a convex combination of the inputs.
CONVEX_CASES = (
    "attention",
    "attention_softmax",
    "gated_attention",
    "gated_attention_ungated",
)
# The attention cases whose output goes through Dense projections: those
# overflow (to inf, and inf - inf = NaN) on inputs near the dtype's largest
# value, as any Dense layer does, so only their weights are checked there.
PROJECTED_CASES = ("map",)
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(tensor, "float64")))


def _built(case, shape, **kwargs):
    layer = make_layer(case, **kwargs)
    layer.build(shape)
    randomize_weights(layer)
    return layer


def _nan_channels(x, mask=None):
    """Per sample and channel (channels_last), whether a valid value is NaN."""
    nan = np.isnan(x)
    if mask is not None:
        nan &= mask[..., None]
    return nan.reshape(x.shape[0], -1, x.shape[-1]).any(axis=1)


class TestNaN:
    @pytest.mark.parametrize("case", NON_ATTENTION)
    def test_nan_propagates_to_its_channels_only(self, case):
        x = random_input((3, 4, 5, 3), dtype="float32")
        x[0, 1, 2, 0] = np.nan
        x[2, 0, 0, 1] = x[2, 3, 4, 2] = np.nan
        out = _numpy(_built(case, x.shape)(x)).reshape(3, -1)
        expected = _nan_channels(x)
        if case == "mixed":  # [avg, max]: both halves
            expected = np.concatenate([expected, expected], axis=1)
        np.testing.assert_array_equal(np.isnan(out), expected)

    @pytest.mark.parametrize("case", NON_ATTENTION)
    def test_masked_nan_never_propagates(self, case):
        x = random_input((2, 6, 3), dtype="float32")
        x[0, 4, 1] = x[1, 0, 2] = np.nan
        mask = np.ones((2, 6), bool)
        mask[0, 4] = False
        out = _numpy(_built(case, x.shape)(x, mask=mask)).reshape(2, -1)
        expected = _nan_channels(x, mask)
        if case == "mixed":
            expected = np.concatenate([expected, expected], axis=1)
        np.testing.assert_array_equal(np.isnan(out), expected)
        assert expected[1].any() and not expected[0].any()

    @pytest.mark.parametrize("case", ATTENTION)
    def test_attention_nan_makes_its_sample_nan(self, case):
        x = random_input((3, 4, 4, 4), dtype="float32")
        x[1, 2, 3, 0] = np.nan
        layer = _built(case, x.shape)
        out, scores = layer(x, return_attention_scores=True)
        out, scores = _numpy(out), _numpy(scores)
        assert np.all(np.isnan(out[1])) and np.all(np.isnan(scores[1]))
        assert np.all(np.isfinite(out[[0, 2]])) and np.all(np.isfinite(scores[[0, 2]]))

    @pytest.mark.parametrize("case", ATTENTION)
    def test_attention_masked_nan_never_propagates(self, case):
        x = random_input((2, 6, 4), dtype="float32")
        x[0, 5] = np.nan
        mask = np.arange(6)[None] < np.array([[5], [6]])
        out = _numpy(_built(case, x.shape)(x, mask=mask))
        assert np.all(np.isfinite(out))

    @pytest.mark.parametrize("case", NOT_PER_CHANNEL)
    def test_nan_makes_its_sample_nan_unless_masked(self, case):
        """A covariance couples every channel: one NaN spoils its sample."""
        x = random_input((3, 6, 4), dtype="float32")
        x[0, 2, 1] = x[1, 5, 3] = np.nan
        mask = np.ones((3, 6), bool)
        mask[1, 5] = False
        out = _numpy(_built(case, x.shape)(x, mask=mask))
        assert np.all(np.isnan(out[0]))
        assert np.all(np.isfinite(out[1:]))

    @pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
    @pytest.mark.parametrize("case", sorted(LAYER_CASES))
    def test_nan_in_a_sample_leaves_the_others_finite(self, case, policy):
        x = random_input((2, 3, 3, 4), dtype="float32")
        x[0] = np.nan
        out = _numpy(_built(case, x.shape, dtype=policy)(x))
        assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1]))


class TestInf:
    @pytest.mark.parametrize(
        "column, expected",
        [
            ([np.inf, 1.0, 2.0], np.inf),
            ([-np.inf, 1.0, 2.0], -np.inf),
            ([np.inf, -np.inf, 2.0], np.nan),
        ],
    )
    def test_average_follows_numpy_mean(self, column, expected):
        x = np.array(column, "float32")[None, :, None]
        out = _numpy(kgp.GlobalAveragePooling()(x))
        np.testing.assert_array_equal(out, [[expected]])
        np.testing.assert_array_equal(out, np.mean(x, axis=1))

    @pytest.mark.parametrize(
        "column", [[np.inf, 1.0], [-np.inf, 1.0], [-np.inf, -np.inf], [np.inf, -np.inf]]
    )
    def test_max_follows_numpy_max(self, column):
        x = np.array(column, "float32")[None, :, None]
        out = _numpy(kgp.GlobalMaxPooling()(x))
        np.testing.assert_array_equal(out, np.max(x, axis=1))

    def test_gem_positive_inf_gives_inf_and_negative_inf_clamps(self):
        x = np.array([[[np.inf, -np.inf], [2.0, -np.inf]]], "float32")
        out = _numpy(kgp.GlobalGeMPooling(p=3.0, eps=1e-6)(x))
        assert out[0, 0] == np.inf
        np.testing.assert_allclose(out[0, 1], 1e-6, rtol=1e-5)

    @pytest.mark.parametrize("policy", ["float32", "float64", "mixed_float16"])
    def test_lse_follows_its_limits(self, policy):
        """+inf gives +inf; a -inf adds nothing to the mean but counts; a
        channel of -inf only gives -inf, as the max does."""
        x = np.array([[[np.inf, -np.inf, -np.inf], [1.0, 1.0, -np.inf]]], "float32")
        out = _numpy(kgp.GlobalLSEPooling(r=2.0, dtype=policy)(x))
        assert out[0, 0] == np.inf and out[0, 2] == -np.inf
        # log(mean(exp(2 * [-inf, 1]))) / 2 = 1 + log(1 / 2) / 2
        rtol = 1e-3 if policy == "mixed_float16" else 1e-6
        np.testing.assert_allclose(out[0, 1], 1.0 - np.log(2.0) / 2, rtol=rtol)


class TestGeMClamp:
    @pytest.mark.parametrize("policy", ["float32", "float64", "mixed_float16"])
    def test_negative_inputs_clamp_at_eps(self, policy):
        """All-negative channels pool to eps; mixed signs pool the clamped map."""
        x = -np.abs(random_input((2, 5, 5, 3)))
        x[1, :, :, 2] = np.abs(x[1, :, :, 2])
        layer = kgp.GlobalGeMPooling(p=3.0, eps=1e-3, dtype=policy)
        out = _numpy(layer(x))
        rtol = 1e-3 if policy == "mixed_float16" else 1e-5
        np.testing.assert_allclose(out[0], 1e-3, rtol=rtol)
        np.testing.assert_allclose(out[1, :2], 1e-3, rtol=rtol)
        clamped = np.maximum(x[1, :, :, 2], 1e-3)
        expected = np.mean(clamped**3) ** (1 / 3)
        np.testing.assert_allclose(out[1, 2], expected, rtol=max(rtol, 1e-5))

    def test_negative_inputs_get_no_gradient(self):
        x = random_input((1, 6, 2))
        layer = kgp.GlobalGeMPooling(p=2.0, dtype="float64")
        dx = gradients(layer, x, np.ones((1, 2)))[0]
        np.testing.assert_array_equal(dx[x < 1e-6], 0.0)
        assert np.all(dx[x > 1e-6] > 0)


def _extreme(draw, shape, limit):
    """Finite values anywhere in [-limit, limit], favouring the extremes."""
    size = int(np.prod(shape))
    element = st.one_of(
        st.sampled_from([limit, -limit, limit / 2, -limit / 2, 1e30, -1e30, 0.0]),
        st.floats(-limit, limit, allow_nan=False, allow_infinity=False, width=32),
    )
    values = draw(st.lists(element, min_size=size, max_size=size))
    return np.clip(np.array(values, np.float64), -limit, limit).reshape(shape)


@pytest.mark.parametrize("case", ATTENTION)
@settings(max_examples=strategies.examples(60))
@given(data=st.data())
def test_finite_inputs_never_give_nan_attention(case, data):
    """Inputs up to the dtype's largest finite value: finite weights summing to
    1 and a NaN-free output, with and without a mask, in float32 and float16."""
    policy = data.draw(st.sampled_from(["float32", "float16", "mixed_float16"]))
    limit = FLOAT32_MAX if policy == "float32" else FLOAT16_MAX
    spec = data.draw(strategies.maps(), label="spec")
    layer = strategies.built_layer(data.draw, case, policy, spec)
    large_weights = data.draw(st.booleans(), label="large weights")
    if large_weights:
        for weight in layer.weights:  # logits far beyond +-1e30
            value = np.asarray(keras.ops.convert_to_numpy(weight), np.float64)
            factor = 1e4 if weight.dtype == "float32" else 10.0
            weight.assign((value * factor).astype(weight.dtype))
    x = _extreme(data.draw, spec["shape"], limit).astype(
        "float32" if policy == "float32" else "float16"
    )
    mask = spec["mask"]
    out, scores = call(layer, x, mask=mask, return_attention_scores=True)
    out, scores = _numpy(out), _numpy(scores)
    assert case in PROJECTED_CASES or not np.any(np.isnan(out))
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)
    batch = x.shape[0]
    sums = scores_per_query(layer, scores).sum(axis=-1)  # (batch, queries)
    valid = np.ones(batch, bool) if mask is None else mask.any(axis=1)
    np.testing.assert_allclose(sums[valid], 1.0, rtol=4e-3)
    np.testing.assert_array_equal(sums[~valid], 0.0)
    # float16 values are far from float32 overflow; an output that is not a
    # convex combination of the inputs (SimPool's normalized values, MAP's
    # projections) can pass float16's range when large weights scale it.
    if policy != "float32" and (case in CONVEX_CASES or not large_weights):
        assert case in PROJECTED_CASES or np.all(np.isfinite(out))


@pytest.mark.parametrize("normalize", ["sigmoid", "softmax"])
@pytest.mark.parametrize("value", [1e30, -1e30, 1e38, -1e38, FLOAT32_MAX])
def test_extreme_logits_with_a_mask_pool_the_valid_steps(normalize, value):
    """Logits below -1e30 (beyond the old masked-logit constant) still pool."""
    layer = kgp.GlobalAttentionPooling(reduction=1, normalize=normalize)
    layer.build((2, 4, 2))
    layer.set_weights(
        [
            np.eye(2, dtype="float32"),
            np.zeros(2, "float32"),
            np.ones((2, 1), "float32"),
            np.array([-abs(value)], "float32"),
        ]
    )
    x = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]] * 2, "float32")
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    out, scores = call(layer, x, mask=mask, return_attention_scores=True)
    out, scores = _numpy(out), _numpy(scores)
    # Every valid logit is the same huge negative number: equal weights.
    np.testing.assert_allclose(scores[0], [0.5, 0.5, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[0], [2.0, 3.0], rtol=1e-6)
    assert np.all(np.isfinite(out[1]))


@pytest.mark.parametrize("normalize", ["sigmoid", "softmax"])
@pytest.mark.parametrize("value", [1e38, FLOAT32_MAX, 1e30])
def test_overflowing_branch_gives_finite_weights(normalize, value):
    """Finite inputs whose scoring branch overflows to inf - inf = NaN."""
    layer = kgp.GlobalAttentionPooling(reduction=1, normalize=normalize)
    x = np.array([[[value, value], [-value, -value], [1.0, 2.0]]], "float32")
    layer.build(x.shape)
    layer.set_weights(
        [
            np.full((2, 2), 1e4, "float32"),
            np.zeros(2, "float32"),
            np.array([[1.0], [-1.0]], "float32"),
            np.zeros(1, "float32"),
        ]
    )
    out, scores = layer(x, return_attention_scores=True)
    out, scores = _numpy(out), _numpy(scores)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)
    np.testing.assert_allclose(scores.sum(), 1.0, rtol=1e-6)
    assert not np.any(np.isnan(out))
    # The pooled value is a convex combination: within each channel's bounds.
    assert np.all(out >= x.min(axis=1)) and np.all(out <= x.max(axis=1))


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("value", [1e38, FLOAT32_MAX, 1e30])
def test_overflowing_gated_branch_gives_finite_weights(gated, value):
    """Finite inputs whose `V h` overflows to inf - inf = NaN (torch sums in
    float32; TensorFlow and jax give inf here)."""
    layer = kgp.GlobalGatedAttentionPooling(units=2, gated=gated)
    x = np.array([[[value, value], [-value, -value], [1.0, 2.0]]], "float32")
    layer.build(x.shape)
    kernel = np.array([[1e4, 1e4], [-1e4, 1e4]], "float32")  # inf - inf
    for name in ("hidden", "gate") if gated else ("hidden",):
        getattr(layer, f"{name}_kernel").assign(kernel)
    layer.score_kernel.assign(np.array([[1.0], [-1.0]], "float32"))
    out, scores = layer(x, return_attention_scores=True)
    out, scores = _numpy(out), _numpy(scores)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)
    np.testing.assert_allclose(scores.sum(), 1.0, rtol=1e-6)
    assert not np.any(np.isnan(out))
    assert np.all(out >= x.min(axis=1)) and np.all(out <= x.max(axis=1))


def test_sim_pool_of_values_near_the_float32_limit():
    """SimPool's layer norm scales a position holding huge values first, so
    finite inputs up to the largest float32 give finite values (and the exact
    layer norm), finite weights summing to 1 and a finite output."""
    x = random_input((2, 6, 4), dtype="float32")
    huge = (x / np.abs(x).max() * FLOAT32_MAX).astype("float32")
    ones, zeros = np.ones(4, "float32"), np.zeros(4, "float32")
    normalized = _numpy(kgp.pool_ops.layer_norm(huge, ones, zeros))
    np.testing.assert_allclose(normalized, layer_norm(huge), rtol=1e-5, atol=1e-6)
    layer = _built("simpool_gamma", huge.shape)
    out, scores = layer(huge, return_attention_scores=True)
    assert np.all(np.isfinite(_numpy(out)))
    assert np.all(np.isfinite(_numpy(scores)))
    np.testing.assert_allclose(_numpy(scores).sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_sim_pool_infinite_value_makes_its_sample_nan(value):
    """The layer norm of a position holding inf is undefined (inf - inf)."""
    x = random_input((2, 5, 4), dtype="float32")
    x[0, 2, 1] = value
    out, scores = _built("simpool", x.shape)(x, return_attention_scores=True)
    out, scores = _numpy(out), _numpy(scores)
    assert np.all(np.isnan(out[0])) and np.all(np.isnan(scores[0]))
    assert np.all(np.isfinite(out[1])) and np.all(np.isfinite(scores[1]))
