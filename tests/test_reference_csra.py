"""The NumPy reference of CSRA on its own: loops, limits and finite differences.

The CSRA layer's tests trust `keras_globalpool.reference.csra` as their
oracle, so these tests check it without Keras.
"""

import math

import numpy as np
import pytest

from keras_globalpool.reference.csra import CSRA_TEMPERATURES, csra, csra_grad

DATA_FORMATS = ("channels_last", "channels_first")
RANKS = (3, 4, 5)
SPATIAL = {3: (4,), 4: (3, 2), 5: (2, 2, 2)}
CHANNELS, CLASSES = 3, 2
HEADS = sorted(CSRA_TEMPERATURES)
# Large enough that the attention's share of the gradient shows.
LAM = 0.7
FILLS = (np.nan, np.inf, -np.inf, 1e300)


@pytest.fixture(autouse=True)
def _no_silent_overflow():
    """Any overflow, x/0, 0/0 or inf - inf in the reference fails the test.

    Underflow is allowed: terms far below the largest one may round to zero.
    """
    with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        yield


def make_kernel(heads, seed=0):
    return np.random.default_rng(seed).normal(size=(heads, CHANNELS, CLASSES))


def input_shape(rank, data_format, batch=3):
    if data_format == "channels_last":
        return (batch, *SPATIAL[rank], CHANNELS)
    return (batch, CHANNELS, *SPATIAL[rank])


def random_input(rank, data_format="channels_last", batch=3, seed=1):
    return np.random.default_rng(seed).normal(
        size=input_shape(rank, data_format, batch)
    )


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


def valid_positions(x, mask, b):
    """The valid positions of sample `b` of a channels-last `x`, `(n, C)`."""
    positions = x[b].reshape(-1, x.shape[-1])
    return positions if mask is None else positions[mask[b].reshape(-1)]


def loop_csra(x, kernel, temperatures, lam, mask=None):
    """CSRA of a channels-last `x`, one sample, head and class at a time."""
    out = np.zeros((x.shape[0], kernel.shape[-1]))
    for b in range(x.shape[0]):
        positions = valid_positions(x, mask, b)
        if not len(positions):
            continue
        for h, temperature in enumerate(temperatures):
            for k in range(kernel.shape[-1]):
                column = kernel[h, :, k]
                s = positions @ column / np.linalg.norm(column)
                if temperature == math.inf:
                    attention = s.max()
                else:
                    # The scores here are small: no shift is needed.
                    e = np.exp(temperature * s)
                    attention = np.sum(e * s) / e.sum()
                out[b, k] += s.mean() + lam * attention
    return out


class TestTemperatures:
    def test_the_papers_settings(self):
        assert sorted(CSRA_TEMPERATURES) == [1, 2, 4, 6, 8]
        for heads, temperatures in CSRA_TEMPERATURES.items():
            assert len(temperatures) == heads
            assert temperatures[0] == 1.0
            assert np.all(np.diff(temperatures) > 0)
            assert (temperatures[-1] == math.inf) == (heads > 1)


class TestForward:
    @pytest.mark.parametrize(
        "scores, temperatures, lam, expected",
        [
            # mean 2 + 0.5 * max 3
            ([1.0, 3.0], (math.inf,), 0.5, 3.5),
            # softmax([0, log 3]) = [1/4, 3/4]: attention 3/4 log 3.
            ([0.0, np.log(3.0)], (1.0,), 1.0, 1.25 * np.log(3.0)),
            # T = 2: softmax = [1/10, 9/10]; two heads add up.
            (
                [0.0, np.log(3.0)],
                (2.0, math.inf),
                2.0,
                np.log(3.0) + 2.0 * (0.9 + 1.0) * np.log(3.0),
            ),
        ],
    )
    def test_hand_computed(self, scores, temperatures, lam, expected):
        # One channel and a kernel of 4 per head: the scores are `x`.
        x = np.array(scores)[None, :, None]
        kernel = np.full((len(temperatures), 1, 1), 4.0)
        out = csra(x, kernel, temperatures, lam)
        np.testing.assert_allclose(out, [[expected]], rtol=1e-14)

    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("heads", HEADS)
    def test_matches_a_loop(self, heads, rank, masked):
        x = random_input(rank)
        kernel = make_kernel(heads)
        mask = random_mask(rank) if masked else None
        out = csra(x, kernel, CSRA_TEMPERATURES[heads], LAM, mask=mask)
        expected = loop_csra(x, kernel, CSRA_TEMPERATURES[heads], LAM, mask)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)

    @pytest.mark.parametrize("temperature", [1.0, 5.0, math.inf])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    def test_one_head_without_attention_is_the_mean_cosine_score(
        self, rank, data_format, temperature
    ):
        # The mean is linear: the mean of the scores is the score of the
        # mean of the features.
        x = random_input(rank, data_format)
        mask = random_mask(rank)
        kernel = make_kernel(1)
        out = csra(x, kernel, (temperature,), 0.0, data_format, mask)
        channels_last = x if data_format == "channels_last" else np.moveaxis(x, 1, -1)
        unit = kernel[0] / np.linalg.norm(kernel[0], axis=0)
        for b in range(2):
            mean = valid_positions(channels_last, mask, b).mean(axis=0)
            np.testing.assert_allclose(out[b], mean @ unit, rtol=1e-13)
        np.testing.assert_array_equal(out[2], 0.0)

    @pytest.mark.parametrize("rank", RANKS)
    def test_an_infinite_temperature_is_the_max(self, rank):
        x = random_input(rank)
        mask = random_mask(rank)
        kernel = make_kernel(1)
        with_max = csra(x, kernel, (math.inf,), 1.0, mask=mask)
        attention = with_max - csra(x, kernel, (math.inf,), 0.0, mask=mask)
        for b in range(2):
            positions = valid_positions(x, mask, b)
            for k in range(CLASSES):
                column = kernel[0, :, k]
                scores = [p @ column / np.linalg.norm(column) for p in positions]
                np.testing.assert_allclose(attention[b, k], max(scores), rtol=1e-13)

    @pytest.mark.parametrize("rank", RANKS)
    def test_the_kernels_scale_does_not_matter(self, rank):
        x = random_input(rank)
        kernel = make_kernel(4)
        # A different positive scale per column, down to a norm near 1e-9.
        scale = np.array([1e-9, 1e-3, 0.5, 7.0, 1e3, 3.0, 2.0, 1e6]).reshape(4, 1, 2)
        out = csra(x, kernel, CSRA_TEMPERATURES[4], LAM, mask=random_mask(rank))
        scaled = csra(
            x, scale * kernel, CSRA_TEMPERATURES[4], LAM, mask=random_mask(rank)
        )
        np.testing.assert_allclose(scaled, out, rtol=1e-12, atol=1e-15)
        # A negative scale flips the sign of the scores, which the max and
        # the softmax do not follow.
        flipped = csra(x, -kernel, CSRA_TEMPERATURES[4], LAM)
        assert not np.allclose(flipped, -csra(x, kernel, CSRA_TEMPERATURES[4], LAM))

    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    def test_output_shape_and_dtype(self, rank, data_format):
        x = random_input(rank, data_format).astype(np.float32)
        out = csra(x, make_kernel(2), CSRA_TEMPERATURES[2], LAM, data_format)
        assert out.shape == (3, CLASSES)
        assert out.dtype == np.float64

    def test_a_map_without_positions_gives_zeros(self):
        out = csra(np.ones((2, 0, CHANNELS)), make_kernel(8), CSRA_TEMPERATURES[8], LAM)
        np.testing.assert_array_equal(out, np.zeros((2, CLASSES)))


class TestLimits:
    # One channel and kernels of opposite signs: the scores are `x` and
    # `-x`, whose largest values are 0.5 apart from the next ones.
    X = np.array([[1.0, 3.5, -2.0, 2.0, 0.5, 3.0], [8.0, -5.0, 7.5, 0.0, -4.0, 6.0]])
    KERNEL = np.array([[[2.0, -0.5]]])

    @pytest.mark.parametrize("temperature", [1e4, 1e6])
    def test_a_large_temperature_approaches_the_max_without_overflow(self, temperature):
        x = self.X[..., None]
        soft = csra(x, self.KERNEL, (temperature,), 1.0)
        hard = csra(x, self.KERNEL, (math.inf,), 1.0)
        np.testing.assert_allclose(soft, hard, rtol=1e-14)
        mean = self.X.mean(axis=1)
        expected = np.stack(
            [mean + self.X.max(axis=1), -mean - self.X.min(axis=1)], axis=1
        )
        np.testing.assert_allclose(hard, expected, rtol=1e-14)
        dx_soft = csra_grad(x, np.ones((2, 2)), self.KERNEL, (temperature,), 1.0)["x"]
        dx_hard = csra_grad(x, np.ones((2, 2)), self.KERNEL, (math.inf,), 1.0)["x"]
        np.testing.assert_allclose(dx_soft, dx_hard, rtol=1e-9, atol=1e-12)

    def test_a_tiny_temperature_approaches_the_mean(self):
        x = self.X[..., None]
        out = csra(x, self.KERNEL, (1e-9,), 1.0)
        mean = self.X.mean(axis=1)
        np.testing.assert_allclose(out, 2.0 * np.stack([mean, -mean], 1), rtol=1e-7)


class TestMasks:
    @pytest.mark.parametrize("fill", FILLS)
    @pytest.mark.parametrize("rank", RANKS)
    def test_masked_positions_are_left_out(self, rank, fill):
        # Sample b keeps a box of the map; CSRA of it with the mask must equal
        # CSRA of the box alone, whatever the positions outside it hold.
        rng = np.random.default_rng(4)
        x = rng.normal(size=input_shape(rank, "channels_last", 2))
        kernel, temperatures = make_kernel(6), CSRA_TEMPERATURES[6]
        boxes = [SPATIAL[rank], tuple(max(s - 1, 1) for s in SPATIAL[rank])]
        mask = np.zeros((2, *SPATIAL[rank]), dtype=bool)
        for b, box in enumerate(boxes):
            mask[(b, *(slice(0, s) for s in box))] = True
        x[~mask] = fill
        dy = rng.normal(size=(2, CLASSES))
        out = csra(x, kernel, temperatures, LAM, mask=mask)
        grads = csra_grad(x, dy, kernel, temperatures, LAM, mask=mask)
        d_kernel = 0.0
        for b, box in enumerate(boxes):
            inside = (slice(b, b + 1), *(slice(0, s) for s in box))
            alone = x[inside]
            np.testing.assert_allclose(
                out[b : b + 1], csra(alone, kernel, temperatures, LAM), rtol=1e-13
            )
            alone_grads = csra_grad(alone, dy[b : b + 1], kernel, temperatures, LAM)
            np.testing.assert_allclose(grads["x"][inside], alone_grads["x"], rtol=1e-12)
            d_kernel = d_kernel + alone_grads["kernel"]
        assert np.all(grads["x"][~mask] == 0.0)
        np.testing.assert_allclose(grads["kernel"], d_kernel, rtol=1e-10, atol=1e-14)

    @pytest.mark.parametrize("heads", HEADS)
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    def test_fully_masked_sample_gives_zeros(self, data_format, heads):
        x = random_input(4, data_format, 2) + 10.0
        mask = np.ones((2, *SPATIAL[4]), dtype=bool)
        mask[1] = False
        x[1] = np.nan
        kernel, temperatures = make_kernel(heads), CSRA_TEMPERATURES[heads]
        out = csra(x, kernel, temperatures, LAM, data_format, mask)
        assert np.all(out[1] == 0.0)
        assert np.all(np.abs(out[0]) > 0.0)
        dy = np.array([[0.0, 0.0], [1.0, -2.0]])
        grads = csra_grad(x, dy, kernel, temperatures, LAM, data_format, mask)
        assert grads.keys() == {"x", "kernel"}
        for name, grad in grads.items():
            np.testing.assert_array_equal(grad, 0.0, err_msg=name)


class TestLayout:
    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize("rank", RANKS)
    def test_channels_first_is_the_transpose(self, rank, masked):
        x = random_input(rank)
        dy = np.random.default_rng(3).normal(size=(3, CLASSES))
        mask = random_mask(rank) if masked else None
        args = (make_kernel(8), CSRA_TEMPERATURES[8], LAM)
        first = np.moveaxis(x, -1, 1)
        np.testing.assert_allclose(
            csra(first, *args, "channels_first", mask),
            csra(x, *args, "channels_last", mask),
            rtol=1e-13,
        )
        grads_last = csra_grad(x, dy, *args, "channels_last", mask)
        grads_first = csra_grad(first, dy, *args, "channels_first", mask)
        np.testing.assert_allclose(
            grads_first["x"], np.moveaxis(grads_last["x"], -1, 1), rtol=1e-13
        )
        np.testing.assert_allclose(
            grads_first["kernel"], grads_last["kernel"], rtol=1e-12
        )

    @pytest.mark.parametrize("rank", RANKS)
    def test_permuting_the_positions_changes_nothing(self, rank):
        rng = np.random.default_rng(8)
        x, mask = random_input(rank), random_mask(rank)
        dy = rng.normal(size=(3, CLASSES))
        args = (make_kernel(8), CSRA_TEMPERATURES[8], LAM)
        order = rng.permutation(math.prod(SPATIAL[rank]))

        def permuted(a, channels):
            flat = a.reshape(3, -1, *channels)[:, order]
            return flat.reshape(a.shape)

        x_perm = permuted(x, (CHANNELS,))
        mask_perm = permuted(mask, ())
        assert not np.array_equal(x_perm, x)
        np.testing.assert_allclose(
            csra(x_perm, *args, mask=mask_perm),
            csra(x, *args, mask=mask),
            rtol=1e-13,
        )
        grads = csra_grad(x, dy, *args, mask=mask)
        grads_perm = csra_grad(x_perm, dy, *args, mask=mask_perm)
        np.testing.assert_allclose(
            grads_perm["x"], permuted(grads["x"], (CHANNELS,)), rtol=1e-13
        )
        np.testing.assert_allclose(grads_perm["kernel"], grads["kernel"], rtol=1e-12)


class TestGradients:
    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize("data_format", DATA_FORMATS)
    @pytest.mark.parametrize("rank", RANKS)
    @pytest.mark.parametrize("heads", HEADS)
    def test_matches_finite_differences(self, heads, rank, data_format, masked):
        # Normal inputs have no ties for the max, and no two scores within
        # the step of each other.
        x = random_input(rank, data_format, seed=6)
        dy = np.random.default_rng(7).normal(size=(3, CLASSES))
        kernel, temperatures = make_kernel(heads, seed=8), CSRA_TEMPERATURES[heads]
        mask = random_mask(rank) if masked else None
        common = {"data_format": data_format, "mask": mask}
        grads = csra_grad(x, dy, kernel, temperatures, LAM, **common)
        assert grads.keys() == {"x", "kernel"}
        assert grads["x"].shape == x.shape
        assert grads["kernel"].shape == kernel.shape

        def loss_x(value):
            return np.sum(csra(value, kernel, temperatures, LAM, **common) * dy)

        def loss_kernel(value):
            return np.sum(csra(x, value, temperatures, LAM, **common) * dy)

        numeric = numeric_grad(loss_x, x)
        np.testing.assert_allclose(grads["x"], numeric, rtol=1e-6, atol=1e-8)
        assert np.any(grads["x"] != 0.0)
        if masked:
            channels_last = grads["x"]
            if data_format == "channels_first":
                channels_last = np.moveaxis(channels_last, 1, -1)
            assert np.all(channels_last[~mask] == 0.0)
        numeric = numeric_grad(loss_kernel, kernel)
        np.testing.assert_allclose(grads["kernel"], numeric, rtol=1e-6, atol=1e-8)
        assert np.any(grads["kernel"] != 0.0)

    @pytest.mark.parametrize("heads", HEADS)
    def test_the_kernel_gradient_is_orthogonal_to_each_column(self, heads):
        # The scores see only each column's direction.
        x, kernel = random_input(4), make_kernel(heads)
        dy = np.random.default_rng(9).normal(size=(3, CLASSES))
        d_kernel = csra_grad(x, dy, kernel, CSRA_TEMPERATURES[heads], LAM)["kernel"]
        along = np.sum(d_kernel * kernel, axis=1) / np.linalg.norm(kernel, axis=1)
        np.testing.assert_allclose(along, 0.0, atol=1e-13)
        assert np.all(np.linalg.norm(d_kernel, axis=1) > 1e-3)

    def test_a_clamped_norm_passes_no_gradient(self):
        # Column (0, 1) has a squared norm below 1e-24: its norm is the
        # constant 1e-12, so the scores are linear in it. A step of 1e-16
        # keeps it below the floor.
        x, dy = random_input(3), np.array([[1.0, -0.5], [0.3, 2.0], [-1.0, 1.0]])
        kernel = make_kernel(2)
        kernel[0, :, 1] = [3e-13, -4e-13, 5e-13]
        assert np.sum(kernel[0, :, 1] ** 2) < 1e-24
        temperatures = CSRA_TEMPERATURES[2]
        d_kernel = csra_grad(x, dy, kernel, temperatures, LAM)["kernel"]

        def loss(column):
            perturbed = kernel.copy()
            perturbed[0, :, 1] = column
            return np.sum(csra(x, perturbed, temperatures, LAM) * dy)

        numeric = numeric_grad(loss, kernel[0, :, 1], step=1e-16)
        np.testing.assert_allclose(d_kernel[0, :, 1], numeric, rtol=1e-6)
        # Unclamped, the gradient would be orthogonal to the column.
        column, grad = kernel[0, :, 1], d_kernel[0, :, 1]
        cosine = grad @ column / (np.linalg.norm(grad) * np.linalg.norm(column))
        assert abs(cosine) > 1e-2

    @pytest.mark.parametrize(
        "values, mask, expected",
        [
            ([3.0, 3.0, 1.0], None, [0.5, 0.5, 0.0]),
            ([5.0, 5.0, 5.0, 1.0], None, [1 / 3, 1 / 3, 1 / 3, 0.0]),
            ([4.0, 4.0, 4.0, 1.0], [True, False, True, True], [0.5, 0.0, 0.5, 0.0]),
            ([2.0, 1.0, 2.0, 9.0], [True, True, True, False], [0.5, 0.0, 0.5, 0.0]),
        ],
    )
    def test_max_ties_share_the_gradient_equally(self, values, mask, expected):
        # One channel, a kernel of 1 and lam 1: the max's share of the
        # gradient is the total minus the mean's.
        x = np.array(values)[None, :, None]
        mask = None if mask is None else np.array([mask])
        valid = np.ones(len(values)) if mask is None else mask[0].astype(float)
        kernel = np.ones((1, 1, 1))
        dx = csra_grad(x, np.full((1, 1), 6.0), kernel, (math.inf,), 1.0, mask=mask)
        mean_share = valid / valid.sum()
        np.testing.assert_allclose(
            dx["x"][0, :, 0], 6.0 * (mean_share + np.array(expected)), rtol=1e-15
        )


class TestErrors:
    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"kernel": np.ones((1, 4, 2))}, "kernel.shape="),
            ({"kernel": np.ones((3, 2))}, "kernel.shape="),
            ({"temperatures": (1.0,)}, "temperatures="),
            ({"temperatures": (1.0, math.nan)}, "temperatures="),
            ({"temperatures": (1.0, -math.inf)}, "temperatures="),
            ({"data_format": "channels_middle"}, "data_format="),
            ({"mask": np.ones((2, 3), bool)}, "mask.shape="),
        ],
    )
    @pytest.mark.parametrize("function", ["forward", "backward"])
    def test_bad_arguments(self, function, kwargs, match):
        x = np.ones((2, 4, CHANNELS))
        arguments = {
            "kernel": make_kernel(2),
            "temperatures": CSRA_TEMPERATURES[2],
            "lam": LAM,
            **kwargs,
        }
        with pytest.raises(ValueError, match=f"Received: {match}"):
            if function == "forward":
                csra(x, **arguments)
            else:
                csra_grad(x, np.ones((2, CLASSES)), **arguments)

    def test_bad_rank(self):
        with pytest.raises(ValueError, match="Received: x.shape="):
            csra(np.ones((2, 3)), make_kernel(1), (1.0,), LAM)

    def test_bad_dy_shape(self):
        with pytest.raises(ValueError, match="Received: dy.shape="):
            csra_grad(np.ones((2, 4, 3)), np.ones((2, 1, 2)), make_kernel(1), (1.0,), 0)
