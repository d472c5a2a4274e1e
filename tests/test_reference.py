"""The NumPy reference on its own: hand-computed values and finite differences.

The layer tests trust `keras_globalpool.reference` as their oracle, so these
tests check it without Keras.
"""

import numpy as np
import pytest

from keras_globalpool import reference

DATA_FORMATS = ("channels_last", "channels_first")
RANKS = (3, 4, 5)
SPATIAL = {3: (4,), 4: (3, 2), 5: (2, 2, 2)}
CHANNELS, UNITS = 3, 2

_rng = np.random.default_rng(5)
ATTENTION = {
    "hidden_kernel": _rng.normal(size=(CHANNELS, UNITS)),
    "hidden_bias": _rng.normal(scale=0.5, size=(UNITS,)),
    "score_kernel": _rng.normal(size=(UNITS, 1)),
    "score_bias": _rng.normal(size=(1,)),
}
GATED_ATTENTION = {
    "hidden_kernel": _rng.normal(size=(CHANNELS, UNITS)),
    "hidden_bias": _rng.normal(scale=0.5, size=(UNITS,)),
    "score_kernel": _rng.normal(size=(UNITS, 1)),
    "gate_kernel": _rng.normal(size=(CHANNELS, UNITS)),
    "gate_bias": _rng.normal(scale=0.5, size=(UNITS,)),
}
UNGATED_ATTENTION = {
    name: GATED_ATTENTION[name]
    for name in ("hidden_kernel", "hidden_bias", "score_kernel")
}
# Multi-head attention pooling: 3 heads of 1 channel with biases and an MLP
# of 5 units, and 1 head of 3 channels with qk_norm.
MAP = {
    "latent": _rng.normal(size=(2, CHANNELS)),
    **{
        f"{name}_kernel": _rng.normal(scale=0.7, size=(CHANNELS, CHANNELS))
        for name in ("query", "key", "value", "output")
    },
    **{
        f"{name}_bias": _rng.normal(scale=0.5, size=(CHANNELS,))
        for name in ("query", "key", "value", "output")
    },
    "mlp_norm_gamma": 1.0 + _rng.normal(scale=0.3, size=(CHANNELS,)),
    "mlp_norm_beta": _rng.normal(scale=0.3, size=(CHANNELS,)),
    "mlp_hidden_kernel": _rng.normal(size=(CHANNELS, 5)),
    "mlp_hidden_bias": _rng.normal(scale=0.5, size=(5,)),
    "mlp_output_kernel": _rng.normal(size=(5, CHANNELS)),
    "mlp_output_bias": _rng.normal(scale=0.5, size=(CHANNELS,)),
}
MAP_QK_NORM = {
    **{
        name: MAP[name]
        for name in ("latent", "query_kernel", "key_kernel", "value_kernel")
    },
    "output_kernel": MAP["output_kernel"],
    "output_bias": MAP["output_bias"],
    **{
        f"{name}_norm_{part}": base + _rng.normal(scale=0.3, size=(CHANNELS,))
        for name in ("query", "key")
        for part, base in (("gamma", 1.0), ("beta", 0.0))
    },
}
# SimPool: 1 head; 3 heads of 1 channel with biases and gamma; 1 head with
# qk_norm (a norm over 1 channel would leave its bias alone) and gamma 1.5.
SIM_POOL = {
    "norm_gamma": 1.0 + _rng.normal(scale=0.3, size=(CHANNELS,)),
    "norm_beta": _rng.normal(scale=0.3, size=(CHANNELS,)),
    "query_kernel": _rng.normal(scale=0.7, size=(CHANNELS, CHANNELS)),
    "key_kernel": _rng.normal(scale=0.7, size=(CHANNELS, CHANNELS)),
}
SIM_POOL_BIASES = {
    "query_bias": _rng.normal(scale=0.5, size=(CHANNELS,)),
    "key_bias": _rng.normal(scale=0.5, size=(CHANNELS,)),
}
SIM_POOL_QK_NORM = {
    f"{name}_norm_{part}": base + _rng.normal(scale=0.3, size=(CHANNELS,))
    for name in ("query", "key")
    for part, base in (("gamma", 1.0), ("beta", 0.0))
}
# The heads (and latents, for MAP) of their attention weights, before the
# spatial axes.
QUERY_AXES = {
    "map": (3, 2),
    "map_qk_norm": (1, 2),
    "simpool": (1,),
    "simpool_heads_gamma": (3,),
    "simpool_qk_norm": (1,),
}
# One gate inside [0, 1], one above and one below: the clip matters.
GATE = np.array([0.3, 1.4, -0.2])
# A projection to 2 channels whose columns sum to more than 0, so that maps
# of values near 10 keep both channels through the ReLU.
COVARIANCE = {
    "kernel": np.array([[1.0, -0.5], [0.3, 0.8], [-0.2, 0.6]]),
    "bias": np.array([0.1, -0.3]),
}
# The cases without `keepdims` -> their output size.
NO_KEEPDIMS = {"covariance": 6, "covariance_reduced": 3}

# name -> (forward, backward, arguments); the array arguments are the ones
# the backward pass differentiates besides `x`.
CASES = {
    "avg": (reference.avg_pool, reference.avg_pool_grad, {}),
    "max": (reference.max_pool, reference.max_pool_grad, {}),
    "mixed_concat": (
        reference.mixed_pool,
        reference.mixed_pool_grad,
        {"mode": "concat"},
    ),
    "mixed_mean": (reference.mixed_pool, reference.mixed_pool_grad, {"mode": "mean"}),
    "mixed_learned": (
        reference.mixed_pool,
        reference.mixed_pool_grad,
        {"mode": "learned", "gate": GATE},
    ),
    "gem": (reference.gem_pool, reference.gem_pool_grad, {"p": np.float64(2.5)}),
    # LSE's two ways to the log of the mean: `log` for a sharp `r`, `log1p`
    # for a soft one (the mean of exp(r * (x - max)) above 1/2).
    "lse": (reference.lse_pool, reference.lse_pool_grad, {"r": np.float64(2.5)}),
    "lse_soft": (reference.lse_pool, reference.lse_pool_grad, {"r": np.float64(0.05)}),
    "attention_sigmoid": (
        reference.attention_pool,
        reference.attention_pool_grad,
        {**ATTENTION, "normalize": "sigmoid"},
    ),
    "attention_softmax": (
        reference.attention_pool,
        reference.attention_pool_grad,
        {**ATTENTION, "normalize": "softmax"},
    ),
    "gated_attention": (
        reference.gated_attention_pool,
        reference.gated_attention_pool_grad,
        GATED_ATTENTION,
    ),
    "gated_attention_ungated": (
        reference.gated_attention_pool,
        reference.gated_attention_pool_grad,
        UNGATED_ATTENTION,
    ),
    "map": (
        reference.multi_head_attention_pool,
        reference.multi_head_attention_pool_grad,
        {**MAP, "num_heads": 3},
    ),
    "map_qk_norm": (
        reference.multi_head_attention_pool,
        reference.multi_head_attention_pool_grad,
        {**MAP_QK_NORM, "num_heads": 1},
    ),
    "covariance": (
        reference.covariance_pool,
        reference.covariance_pool_grad,
        {"iterations": 3},
    ),
    "covariance_reduced": (
        reference.covariance_pool,
        reference.covariance_pool_grad,
        {**COVARIANCE, "iterations": 5},
    ),
    "simpool": (reference.sim_pool, reference.sim_pool_grad, SIM_POOL),
    "simpool_heads_gamma": (
        reference.sim_pool,
        reference.sim_pool_grad,
        {**SIM_POOL, **SIM_POOL_BIASES, "num_heads": 3, "gamma": 2.0},
    ),
    "simpool_qk_norm": (
        reference.sim_pool,
        reference.sim_pool_grad,
        {**SIM_POOL, **SIM_POOL_BIASES, **SIM_POOL_QK_NORM, "gamma": 1.5},
    ),
}
PARAM_NAMES = {
    "mixed_learned": {"gate"},
    "gem": {"p"},
    "lse": {"r"},
    "lse_soft": {"r"},
    "attention_sigmoid": set(ATTENTION),
    "attention_softmax": set(ATTENTION),
    "gated_attention": set(GATED_ATTENTION),
    "gated_attention_ungated": set(UNGATED_ATTENTION),
    "map": set(MAP),
    "map_qk_norm": set(MAP_QK_NORM),
    "covariance_reduced": set(COVARIANCE),
    "simpool": set(SIM_POOL),
    "simpool_heads_gamma": set(SIM_POOL) | set(SIM_POOL_BIASES),
    "simpool_qk_norm": set(SIM_POOL) | set(SIM_POOL_BIASES) | set(SIM_POOL_QK_NORM),
}
# The cases whose forward pass returns `(pooled, weights)`.
WEIGHTED = {case for case in CASES if "attention" in case or case in QUERY_AXES}


@pytest.fixture(autouse=True)
def _no_silent_overflow():
    """Any overflow, x/0, 0/0 or inf - inf in the reference fails the test.

    Underflow is allowed: terms far below the largest one may round to zero.
    """
    with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        yield


def _without_keepdims(case, kwargs):
    """`kwargs` without `keepdims` for a case that has none; a test of
    `keepdims=True` skips such a case, saying so."""
    if case not in NO_KEEPDIMS:
        return kwargs
    kwargs = dict(kwargs)
    if kwargs.pop("keepdims", False):
        pytest.skip(f"{case!r} has no keepdims: its output is not per channel")
    return kwargs


def forward(case, x, **kwargs):
    """The pooled output of `case` (without attention weights)."""
    function, _, params = CASES[case]
    out = function(x, **{**params, **_without_keepdims(case, kwargs)})
    return out[0] if case in WEIGHTED else out


def backward(case, x, dy, **kwargs):
    _, function, params = CASES[case]
    return function(x, dy, **{**params, **_without_keepdims(case, kwargs)})


def input_shape(rank, data_format, batch=2):
    if data_format == "channels_last":
        return (batch, *SPATIAL[rank], CHANNELS)
    return (batch, CHANNELS, *SPATIAL[rank])


def output_shape(case, rank, data_format, keepdims, batch=2):
    if case in NO_KEEPDIMS:
        return (batch, NO_KEEPDIMS[case])
    channels = 2 * CHANNELS if case == "mixed_concat" else CHANNELS
    if not keepdims:
        return (batch, channels)
    ones = (1,) * (rank - 2)
    if data_format == "channels_last":
        return (batch, *ones, channels)
    return (batch, channels, *ones)


def random_mask(rank, batch=3, seed=2):
    """Sample 0 fully valid, sample 1 partly, sample 2 fully masked."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, *SPATIAL[rank]), dtype=bool)
    partial = rng.random(SPATIAL[rank]) < 0.5
    partial.flat[0], partial.flat[-1] = True, False
    mask[1] = partial
    mask[2] = False
    return mask


def numeric_grad(loss, value, step=1e-6):
    """Central finite differences of the scalar `loss(value)`."""
    value = np.array(value, dtype=np.float64)
    grad = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        up, down = value.copy(), value.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (loss(up) - loss(down)) / (2 * step)
    return grad


class TestForward:
    X = np.array([[[1.0, -2.0], [3.0, 4.0], [5.0, 0.0]]])

    @pytest.mark.parametrize(
        "case, kwargs, expected",
        [
            ("avg", {}, [3.0, 2.0 / 3.0]),
            ("max", {}, [5.0, 4.0]),
            ("mixed", {"mode": "concat"}, [3.0, 2.0 / 3.0, 5.0, 4.0]),
            ("mixed", {"mode": "mean"}, [4.0, 7.0 / 3.0]),
            # gate 2.0 is clipped to 1: pure average.
            ("mixed", {"mode": "learned", "gate": [0.25, 2.0]}, [4.5, 2.0 / 3.0]),
            ("mixed", {"mode": "learned", "gate": [-1.0, 0.0]}, [5.0, 4.0]),
            ("avg", {"mask": [[True, True, False]]}, [2.0, 1.0]),
            ("max", {"mask": [[True, False, True]]}, [5.0, 0.0]),
        ],
    )
    def test_hand_computed_avg_max_mixed(self, case, kwargs, expected):
        function = getattr(reference, f"{case}_pool")
        np.testing.assert_allclose(function(self.X, **kwargs), [expected], rtol=1e-15)

    @pytest.mark.parametrize(
        "x, p, expected",
        [
            ([1.0, 7.0], 2.0, 5.0),  # sqrt((1 + 49) / 2)
            ([2.0, 16.0], 0.5, 4.5 + 2 * np.sqrt(2.0)),  # ((sqrt(2) + 4) / 2) ** 2
            ([-4.0, 2.0], 1.0, (1e-6 + 2.0) / 2),  # -4 is clamped to eps
            ([8.0, 8.0, 8.0], 7.0, 8.0),
        ],
    )
    def test_hand_computed_gem(self, x, p, expected):
        x = np.array(x)[None, :, None]
        np.testing.assert_allclose(reference.gem_pool(x, p=p), [[expected]], rtol=1e-14)

    @pytest.mark.parametrize(
        "x, r, expected",
        [
            ([0.0, np.log(3.0)], 1.0, np.log(2.0)),  # log((1 + 3) / 2)
            ([0.0, np.log(3.0)], 2.0, np.log(5.0) / 2),  # log((1 + 9) / 2) / 2
            ([4.0, 4.0, 4.0], 7.0, 4.0),
            ([1000.0, 0.0], 1.0, 1000.0 - np.log(2.0)),  # exp(1000) overflows
            # r -> 0: the mean plus r * var / 2 (+ O(r**3) here).
            ([-5.0, 5.0], 1e-9, 12.5e-9),
        ],
    )
    def test_hand_computed_lse(self, x, r, expected):
        x = np.array(x)[None, :, None]
        out = reference.lse_pool(x, r=r)
        # Adding the max back costs a roundoff of the values' size.
        np.testing.assert_allclose(out, [[expected]], rtol=1e-14, atol=1e-14)

    @pytest.mark.parametrize("r", [0.01, 0.3, 2.0, 20.0])
    @pytest.mark.parametrize("rank", RANKS)
    def test_lse_matches_the_plain_formula(self, rank, r):
        x = np.random.default_rng(0).normal(size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank)
        out = reference.lse_pool(x, r=r, mask=mask)
        for b in range(3):
            valid = x[b][mask[b]]  # (n, C)
            if not len(valid):
                np.testing.assert_array_equal(out[b], 0.0)
                continue
            expected = np.log(np.mean(np.exp(r * valid), axis=0)) / r
            np.testing.assert_allclose(out[b], expected, rtol=1e-12)

    @pytest.mark.parametrize(
        "normalize, weights", [("sigmoid", [0.4, 0.6]), ("softmax", [0.25, 0.75])]
    )
    def test_hand_computed_attention(self, normalize, weights):
        # One channel, identity branch: z = relu(x) = [0, log 3], so
        # sigmoid(z) = [1/2, 3/4] and exp(z) = [1, 3].
        x = np.array([[[0.0], [np.log(3.0)]]])
        pooled, w = reference.attention_pool(
            x, [[1.0]], [0.0], [[1.0]], [0.0], normalize=normalize
        )
        np.testing.assert_allclose(w, [weights], rtol=1e-14)
        np.testing.assert_allclose(pooled, [[weights[1] * np.log(3.0)]], rtol=1e-14)

    @pytest.mark.parametrize("p", [0.5, 3.0, 7.0])
    @pytest.mark.parametrize("rank", RANKS)
    def test_gem_matches_the_plain_formula(self, rank, p):
        x = np.random.default_rng(0).normal(size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank)
        out = reference.gem_pool(x, p=p, mask=mask)
        for b in range(3):
            valid = np.maximum(x[b][mask[b]], 1e-6)  # (n, C)
            expected = np.mean(valid**p, axis=0) ** (1 / p) if len(valid) else 0.0
            np.testing.assert_allclose(out[b], expected, rtol=1e-12)

    @pytest.mark.parametrize("normalize", ["sigmoid", "softmax"])
    @pytest.mark.parametrize("rank", RANKS)
    def test_attention_matches_a_loop(self, rank, normalize):
        x = np.random.default_rng(0).normal(size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank)
        pooled, w = reference.attention_pool(
            x, **ATTENTION, normalize=normalize, mask=mask
        )
        for b in range(3):
            valid = x[b][mask[b]]  # (n, C)
            scores = []
            for position in valid:
                hidden = np.maximum(
                    position @ ATTENTION["hidden_kernel"] + ATTENTION["hidden_bias"],
                    0.0,
                )
                z = (
                    hidden @ ATTENTION["score_kernel"][:, 0]
                    + ATTENTION["score_bias"][0]
                )
                scores.append(
                    1 / (1 + np.exp(-z)) if normalize == "sigmoid" else np.exp(z)
                )
            scores = np.array(scores)
            expected_w = scores / scores.sum() if len(scores) else scores
            np.testing.assert_allclose(w[b][mask[b]], expected_w, rtol=1e-12)
            np.testing.assert_array_equal(w[b][~mask[b]], 0.0)
            np.testing.assert_allclose(
                pooled[b], expected_w @ valid if len(valid) else 0.0, rtol=1e-12
            )

    @pytest.mark.parametrize("gated", [True, False])
    @pytest.mark.parametrize("rank", RANKS)
    def test_gated_attention_matches_a_loop(self, rank, gated):
        x = np.random.default_rng(0).normal(size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank)
        params = GATED_ATTENTION if gated else UNGATED_ATTENTION
        pooled, w = reference.gated_attention_pool(x, **params, mask=mask)
        for b in range(3):
            valid = x[b][mask[b]]  # (n, C)
            scores = []
            for h in valid:
                hidden = np.tanh(h @ params["hidden_kernel"] + params["hidden_bias"])
                if gated:
                    pre = h @ params["gate_kernel"] + params["gate_bias"]
                    hidden = hidden / (1 + np.exp(-pre))
                scores.append(np.exp(hidden @ params["score_kernel"][:, 0]))
            scores = np.array(scores)
            expected_w = scores / scores.sum() if len(scores) else scores
            np.testing.assert_allclose(w[b][mask[b]], expected_w, rtol=1e-12)
            np.testing.assert_array_equal(w[b][~mask[b]], 0.0)
            np.testing.assert_allclose(
                pooled[b], expected_w @ valid if len(valid) else 0.0, rtol=1e-12
            )

    @pytest.mark.parametrize(
        "case", ["simpool", "simpool_heads_gamma", "simpool_qk_norm"]
    )
    @pytest.mark.parametrize("rank", RANKS)
    def test_sim_pool_matches_a_loop(self, rank, case):
        """Sample by sample and position by position, as the paper writes it."""
        x = np.random.default_rng(0).normal(size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank)
        params = CASES[case][2]
        pooled, w = reference.sim_pool(x, **params, mask=mask)
        heads, gamma = params.get("num_heads", 1), params.get("gamma")
        d = CHANNELS // heads

        def norm(v, gain, shift):
            centred = v - np.mean(v)
            return centred / np.sqrt(np.mean(centred**2) + 1e-5) * gain + shift

        for b in range(3):
            valid = x[b][mask[b]]  # (n, C)
            if not len(valid):
                np.testing.assert_array_equal(pooled[b], 0.0)
                np.testing.assert_array_equal(w[b], 0.0)
                continue
            values = np.array(
                [norm(v, params["norm_gamma"], params["norm_beta"]) for v in valid]
            )
            query = valid.mean(axis=0) @ params["query_kernel"]
            query = query + params.get("query_bias", 0.0)
            for h in range(heads):
                part = slice(h * d, (h + 1) * d)
                q = query[part]
                scores = []
                for v in values:
                    k = (v @ params["key_kernel"] + params.get("key_bias", 0.0))[part]
                    if "query_norm_gamma" in params:
                        q_h = norm(
                            q, params["query_norm_gamma"], params["query_norm_beta"]
                        )
                        k = norm(k, params["key_norm_gamma"], params["key_norm_beta"])
                    else:
                        q_h = q
                    scores.append(np.exp(q_h @ k / np.sqrt(d)))
                a = np.array(scores) / np.sum(scores)
                np.testing.assert_allclose(w[b, h][mask[b]], a, rtol=1e-12)
                np.testing.assert_array_equal(w[b, h][~mask[b]], 0.0)
                head_values = values[:, part]
                if gamma is None:
                    expected = a @ head_values
                else:
                    shifted = head_values - head_values.min(axis=0) + 1e-6
                    expected = (a @ shifted**gamma) ** (1 / gamma)
                np.testing.assert_allclose(pooled[b, part], expected, rtol=1e-12)

    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("case", CASES)
    def test_output_shape_and_dtype(self, case, rank, data_format, keepdims):
        x = np.ones(input_shape(rank, data_format), dtype="float32")
        out = forward(case, x, data_format=data_format, keepdims=keepdims)
        assert out.shape == output_shape(case, rank, data_format, keepdims)
        assert out.dtype == np.float64
        if case in WEIGHTED:
            function, _, params = CASES[case]
            _, w = function(x, **params, data_format=data_format, keepdims=keepdims)
            assert w.shape == (2, *QUERY_AXES.get(case, ()), *SPATIAL[rank])

    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("case", CASES)
    def test_channels_first_is_the_transpose(self, case, rank, keepdims, masked):
        rng = np.random.default_rng(1)
        x = rng.normal(size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank) if masked else None
        dy = rng.normal(size=output_shape(case, rank, "channels_last", keepdims, 3))
        to_first = (lambda a: np.moveaxis(a, -1, 1)) if keepdims else (lambda a: a)
        common = {"keepdims": keepdims, "mask": mask}
        last = forward(case, x, **common)
        first = forward(
            case, np.moveaxis(x, -1, 1), data_format="channels_first", **common
        )
        np.testing.assert_allclose(first, to_first(last), rtol=1e-14)
        grads_last = backward(case, x, dy, **common)
        grads_first = backward(
            case,
            np.moveaxis(x, -1, 1),
            to_first(dy),
            data_format="channels_first",
            **common,
        )
        np.testing.assert_allclose(
            grads_first.pop("x"), np.moveaxis(grads_last.pop("x"), -1, 1), rtol=1e-13
        )
        assert grads_first.keys() == grads_last.keys()
        for name, grad in grads_last.items():
            np.testing.assert_allclose(grads_first[name], grad, rtol=1e-12)

    @pytest.mark.parametrize("gate, expected", [(0.0, "max"), (1.0, "avg")])
    def test_learned_gate_endpoints(self, gate, expected):
        x = np.random.default_rng(3).normal(size=(2, 5, CHANNELS))
        out = reference.mixed_pool(x, mode="learned", gate=np.full(CHANNELS, gate))
        pooled = getattr(reference, f"{expected}_pool")(x)
        np.testing.assert_allclose(out, pooled, rtol=1e-15)


class TestMasks:
    @pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf, 1e300])
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("case", CASES)
    def test_masked_positions_are_left_out(self, case, rank, fill):
        # Sample b keeps a box of the map; pooling it with the mask must equal
        # pooling the box alone, whatever the positions outside it hold.
        rng = np.random.default_rng(4)
        x = rng.normal(size=input_shape(rank, "channels_last"))
        boxes = [SPATIAL[rank], tuple(max(s - 1, 1) for s in SPATIAL[rank])]
        mask = np.zeros((2, *SPATIAL[rank]), dtype=bool)
        for b, box in enumerate(boxes):
            mask[(b, *(slice(0, s) for s in box))] = True
        x[~mask] = fill
        dy = rng.normal(size=output_shape(case, rank, "channels_last", False))
        out = forward(case, x, mask=mask)
        grads = backward(case, x, dy, mask=mask)
        params = {name: 0.0 for name in grads if name != "x"}
        for b, box in enumerate(boxes):
            inside = (slice(b, b + 1), *(slice(0, s) for s in box))
            alone = x[inside]
            np.testing.assert_allclose(out[b : b + 1], forward(case, alone), rtol=1e-13)
            alone_grads = backward(case, alone, dy[b : b + 1])
            np.testing.assert_allclose(
                grads["x"][inside], alone_grads.pop("x"), rtol=1e-12
            )
            for name, grad in alone_grads.items():
                params[name] = params[name] + grad
        assert np.all(grads["x"][~mask] == 0.0)
        for name, total in params.items():
            np.testing.assert_allclose(grads[name], total, rtol=1e-10, atol=1e-14)

    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("case", CASES)
    def test_fully_masked_sample_gives_zeros(self, case, data_format, keepdims):
        shape = input_shape(4, data_format)
        x = np.random.default_rng(5).normal(size=shape) + 10.0
        mask = np.ones((2, *SPATIAL[4]), dtype=bool)
        mask[1] = False
        x[1] = np.nan
        common = {"data_format": data_format, "keepdims": keepdims, "mask": mask}
        out = forward(case, x, **common)
        assert np.all(out[1] == 0.0)
        assert np.all(np.abs(out[0]) > 0.0)
        dy = np.zeros(output_shape(case, 4, data_format, keepdims))
        dy[1] = 1.0
        for name, grad in backward(case, x, dy, **common).items():
            np.testing.assert_array_equal(grad, 0.0, err_msg=name)
        if case in WEIGHTED:
            function, _, params = CASES[case]
            _, w = function(x, **params, **common)
            assert np.all(w[1] == 0.0)


class TestGradients:
    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("case", CASES)
    def test_matches_finite_differences(
        self, case, rank, data_format, keepdims, masked
    ):
        rng = np.random.default_rng(6)
        x = rng.normal(size=input_shape(rank, data_format, 3))
        dy = rng.normal(size=output_shape(case, rank, data_format, keepdims, 3))
        common = {
            "data_format": data_format,
            "keepdims": keepdims,
            "mask": random_mask(rank) if masked else None,
        }
        grads = backward(case, x, dy, **common)
        assert grads.keys() == {"x"} | PARAM_NAMES.get(case, set())
        numeric = numeric_grad(lambda v: np.sum(forward(case, v, **common) * dy), x)
        np.testing.assert_allclose(grads["x"], numeric, rtol=1e-6, atol=1e-8)
        assert np.any(grads["x"] != 0.0)
        params = CASES[case][2]
        for name in PARAM_NAMES.get(case, ()):

            def loss(value, name=name):
                return np.sum(forward(case, x, **common, **{name: value}) * dy)

            numeric = numeric_grad(loss, params[name])
            assert np.shape(grads[name]) == np.shape(params[name])
            np.testing.assert_allclose(
                grads[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name
            )

    def test_learned_gate_outside_range_gets_no_gradient(self):
        x = np.random.default_rng(7).normal(size=(2, 5, CHANNELS))
        grads = reference.mixed_pool_grad(
            x, np.ones((2, CHANNELS)), mode="learned", gate=GATE
        )
        avg, peak = reference.avg_pool(x), reference.max_pool(x)
        np.testing.assert_allclose(grads["gate"][0], np.sum(avg - peak, axis=0)[0])
        np.testing.assert_array_equal(grads["gate"][1:], 0.0)

    def test_gem_clamped_inputs_get_no_gradient(self):
        x = np.array([[[-1.0], [0.5e-6], [2.0], [3.0]]])
        dx = reference.gem_pool_grad(x, np.ones((1, 1)), p=3.0)["x"][0, :, 0]
        np.testing.assert_array_equal(dx[:2], 0.0)
        assert np.all(dx[2:] > 0.0)

    @pytest.mark.parametrize("normalize", ["sigmoid", "softmax"])
    def test_relu_at_zero_passes_no_gradient(self, normalize):
        # The hidden pre-activation x[0] - 1 is exactly 0 at both positions,
        # while x[1] differs, so the weights do get a nonzero gradient.
        x = np.array([[[1.0, 0.0], [1.0, 5.0]]])
        grads = reference.attention_pool_grad(
            x, np.ones((1, 2)), [[1.0], [0.0]], [-1.0], [[1.0]], [0.0], normalize
        )
        np.testing.assert_array_equal(grads["hidden_kernel"], 0.0)
        np.testing.assert_array_equal(grads["hidden_bias"], 0.0)
        # Uniform weights 1/2, and the branch passes nothing back to x.
        np.testing.assert_allclose(grads["x"], 0.5, rtol=1e-15)
        assert grads["score_kernel"][0, 0] == 0.0  # relu(0) = 0 feeds it


class TestMaxTies:
    @pytest.mark.parametrize(
        "values, mask, expected",
        [
            ([1.0, 3.0, 3.0, 2.0], None, [0.0, 0.5, 0.5, 0.0]),
            ([5.0, 5.0, 5.0, 1.0], None, [1 / 3, 1 / 3, 1 / 3, 0.0]),
            ([4.0, 4.0, 4.0, 1.0], [True, False, True, True], [0.5, 0.0, 0.5, 0.0]),
            ([2.0, 1.0, 2.0, 9.0], [True, True, True, False], [0.5, 0.0, 0.5, 0.0]),
        ],
    )
    def test_ties_share_the_gradient_equally(self, values, mask, expected):
        x = np.array(values)[None, :, None]
        mask = None if mask is None else np.array([mask])
        dx = reference.max_pool_grad(x, np.full((1, 1), 6.0), mask=mask)["x"]
        np.testing.assert_allclose(dx[0, :, 0], 6.0 * np.array(expected), rtol=1e-15)

    def test_ties_are_counted_per_channel(self):
        x = np.array([[[1.0, 7.0], [1.0, 0.0], [1.0, 7.0]]])
        dx = reference.max_pool_grad(x, np.ones((1, 2)))["x"][0]
        np.testing.assert_allclose(dx, [[1 / 3, 0.5], [1 / 3, 0.0], [1 / 3, 0.5]])

    def test_mixed_concat_adds_avg_and_tied_max(self):
        x = np.array([[[3.0], [3.0], [1.0], [0.0]]])
        dx = reference.mixed_pool_grad(x, np.array([[4.0, 2.0]]))["x"][0, :, 0]
        np.testing.assert_allclose(dx, [1.0 + 1.0, 1.0 + 1.0, 1.0, 1.0])


class TestLimits:
    @pytest.mark.parametrize("rank", RANKS)
    def test_gem_with_p_one_is_average(self, rank):
        rng = np.random.default_rng(8)
        x = rng.uniform(0.1, 2.0, size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank)
        dy = rng.normal(size=(3, CHANNELS))
        np.testing.assert_allclose(
            reference.gem_pool(x, p=1.0, mask=mask),
            reference.avg_pool(x, mask=mask),
            rtol=1e-14,
        )
        np.testing.assert_allclose(
            reference.gem_pool_grad(x, dy, p=1.0, mask=mask)["x"],
            reference.avg_pool_grad(x, dy, mask=mask)["x"],
            rtol=1e-12,
        )

    @pytest.mark.parametrize("p", [200.0, 1000.0])
    @pytest.mark.parametrize("rank", RANKS)
    def test_gem_with_large_p_approaches_max_without_overflow(self, rank, p):
        # 1e3 ** 200 overflows float64: a plain implementation fails here.
        rng = np.random.default_rng(9)
        x = rng.uniform(1.0, 1e3, size=input_shape(rank, "channels_last"))
        n = np.prod(SPATIAL[rank])
        out = reference.gem_pool(x, p=p)
        peak = reference.max_pool(x)
        assert np.all(out <= peak * (1 + 1e-12))
        assert np.all(out >= peak * n ** (-1 / p) * (1 - 1e-12))
        np.testing.assert_allclose(out, peak, rtol=np.log(n) / p)
        grads = reference.gem_pool_grad(x, np.ones_like(out), p=p)
        assert np.all(np.isfinite(grads["x"])) and np.isfinite(grads["p"])
        # GeM is homogeneous of degree 1 (all x > eps): sum(x * dy/dx) = y.
        axes = tuple(range(1, rank - 1))
        np.testing.assert_allclose(np.sum(x * grads["x"], axis=axes), out, rtol=1e-10)
        winners = x == x.max(axis=axes, keepdims=True)
        assert np.all(grads["x"][winners] > 0.3)

    @pytest.mark.parametrize("rank", RANKS)
    def test_lse_with_tiny_r_is_average(self, rank):
        """`log1p` keeps what `exp(r * (x - max))` rounds to 1."""
        rng = np.random.default_rng(8)
        x = rng.normal(size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank)
        dy = rng.normal(size=(3, CHANNELS))
        np.testing.assert_allclose(
            reference.lse_pool(x, r=1e-12, mask=mask),
            reference.avg_pool(x, mask=mask),
            rtol=1e-9,
            atol=1e-11,
        )
        np.testing.assert_allclose(
            reference.lse_pool_grad(x, dy, r=1e-12, mask=mask)["x"],
            reference.avg_pool_grad(x, dy, mask=mask)["x"],
            rtol=1e-9,
        )

    @pytest.mark.parametrize("r", [200.0, 1e4])
    @pytest.mark.parametrize("rank", RANKS)
    def test_lse_with_large_r_approaches_max_without_overflow(self, rank, r):
        # exp(1e4 * 1e3) overflows float64: a plain implementation fails here.
        rng = np.random.default_rng(9)
        x = rng.uniform(1.0, 1e3, size=input_shape(rank, "channels_last"))
        n = np.prod(SPATIAL[rank])
        out = reference.lse_pool(x, r=r)
        peak = reference.max_pool(x)
        assert np.all(out <= peak * (1 + 1e-15))
        assert np.all(out >= peak - np.log(n) / r - 1e-12)
        grads = reference.lse_pool_grad(x, np.ones_like(out), r=r)
        assert np.all(np.isfinite(grads["x"])) and np.isfinite(grads["r"])
        # The weights are a softmax: they sum to 1 per channel.
        axes = tuple(range(1, rank - 1))
        np.testing.assert_allclose(np.sum(grads["x"], axis=axes), 1.0, rtol=1e-12)
        # Shifting x shifts the output: sum(dy/dx) = 1 means x's level cancels.
        shifted = reference.lse_pool(x + 5.0, r=r)
        np.testing.assert_allclose(shifted, out + 5.0, rtol=1e-13)

    @pytest.mark.parametrize("score_bias", [-1000.0, 0.0, 1000.0])
    @pytest.mark.parametrize("normalize", ["sigmoid", "softmax"])
    @pytest.mark.parametrize("rank", RANKS)
    def test_attention_is_a_convex_combination(self, rank, normalize, score_bias):
        rng = np.random.default_rng(10)
        x = 100 * rng.normal(size=input_shape(rank, "channels_last", 3))
        mask = random_mask(rank)[:2]
        x = x[:2]
        weights = {**ATTENTION, "score_bias": np.array([score_bias])}
        pooled, w = reference.attention_pool(
            x, **weights, normalize=normalize, mask=mask
        )
        for b in range(2):
            valid = x[b][mask[b]]
            assert np.all(pooled[b] >= valid.min(axis=0) - 1e-9)
            assert np.all(pooled[b] <= valid.max(axis=0) + 1e-9)
        np.testing.assert_allclose(w.sum(axis=tuple(range(1, rank - 1))), 1.0)
        assert np.all(w[~mask] == 0.0)
        assert np.all(w[mask] >= 0.0)


class TestErrors:
    @pytest.mark.parametrize(
        "function, kwargs, match",
        [
            (reference.avg_pool, {"data_format": "channels_middle"}, "data_format="),
            (reference.mixed_pool, {"mode": "sum"}, "mode='sum'"),
            (reference.mixed_pool, {"mode": "learned"}, "gate=None"),
            (reference.mixed_pool, {"mode": "learned", "gate": [0.5]}, "gate.shape="),
            (reference.max_pool, {"mask": np.ones((2, 3), bool)}, "mask.shape="),
            (
                reference.attention_pool,
                {**ATTENTION, "normalize": "relu"},
                "normalize='relu'",
            ),
            (reference.sim_pool, {**SIM_POOL, "num_heads": 2}, "num_heads=2"),
            (
                reference.sim_pool,
                {**SIM_POOL, "key_bias": SIM_POOL_BIASES["key_bias"]},
                "query_bias=None",
            ),
        ],
    )
    def test_bad_arguments(self, function, kwargs, match):
        with pytest.raises(ValueError, match=f"Received: {match}"):
            function(np.ones((2, 4, CHANNELS)), **kwargs)

    def test_bad_rank(self):
        with pytest.raises(ValueError, match="Received: x.shape="):
            reference.avg_pool(np.ones((2, 3)))

    def test_bad_dy_shape(self):
        with pytest.raises(ValueError, match="Received: dy.shape="):
            reference.avg_pool_grad(np.ones((2, 4, 3)), np.ones((2, 1, 3)))
