"""The claim tasks of `keras_globalpool.cli.data.tasks`, checked from outside.

Each image task puts whole 8x8 digits in the cells of a grid over noise
that stays below the digits' bright pixels, so every cell can be read back
exactly: its bright pixels match one scikit-learn digit and no other. The
labelling rules are checked on what the images show, not on how they were
drawn.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

import keras_globalpool as kgp
from keras_globalpool.cli import data
from keras_globalpool.cli.data import tasks
from keras_globalpool.cli.data.digits import digit_pixels

# Noise reaches 0.25 * 255, rounded to 64; digit pixels above it are exact.
NOISE_MAX = 64
GRID_TASKS = ("presence", "small-mark")


@pytest.fixture(scope="module")
def digits():
    images, labels = digit_pixels()
    return np.round(images).astype("uint8"), labels


@pytest.fixture(scope="module")
def lookup(digits):
    """The label of each sklearn digit, by its pixels above the noise."""
    table = {}
    for image, label in zip(*digits, strict=True):
        table.setdefault(_bright(image).tobytes(), set()).add(int(label))
    assert all(len(labels) == 1 for labels in table.values())
    return {key: labels.pop() for key, labels in table.items()}


@pytest.fixture(scope="module")
def loaded():
    return {name: tasks.load_task(name) for name in tasks.TASKS}


def _bright(image):
    return np.where(image > NOISE_MAX, image, 0)


def _cells(x):
    """`(n, 8g, 8g, 1)` images as `(n, g * g, 8, 8)` grid cells."""
    n, side = x.shape[:2]
    grid = side // tasks.DIGIT_SIZE
    return (
        x[..., 0]
        .reshape(n, grid, 8, grid, 8)
        .transpose(0, 1, 3, 2, 4)
        .reshape(n, grid * grid, 8, 8)
    )


def _read_cells(x, lookup):
    """The digit in each grid cell, `-1` where a cell holds only noise."""
    cells = _cells(x)
    read = np.full(cells.shape[:2], -1)
    for index in np.ndindex(*read.shape):
        key = _bright(cells[index])
        if key.any():
            read[index] = lookup[key.tobytes()]
    return read


def _score(cells, template):
    """Each cell's correlation with `template`: a hand-made digit detector."""
    cells = cells.astype("float64")
    cells -= cells.mean(axis=(-2, -1), keepdims=True)
    cells /= cells.std(axis=(-2, -1), keepdims=True) + 1e-6
    template = (template - template.mean()) / template.std()
    return (cells * template).mean(axis=(-2, -1))


def _accuracy(feature, y):
    """Cross-validated accuracy of a logistic regression on one feature."""
    features = np.asarray(feature, "float64")[:, None]
    return cross_val_score(LogisticRegression(), features, y, cv=5).mean()


def _arrays(dataset):
    names = ("x", "y", "mask", "instance_labels")
    return [getattr(dataset, name) for name in names if hasattr(dataset, name)]


class TestRegistry:
    def test_names_match_keys(self):
        assert list(tasks.TASKS) == ["invariance", "presence", "small-mark", "bag"]
        assert all(task.name == name for name, task in tasks.TASKS.items())

    @pytest.mark.parametrize("name", list(tasks.TASKS))
    def test_favours_registered_poolings(self, name):
        task = tasks.TASKS[name]
        assert task.favours and set(task.favours) <= set(kgp.POOLINGS)
        assert task.claim.endswith(".") and task.isolates.endswith(".")

    def test_unknown_task(self):
        with pytest.raises(ValueError, match="Received: task='texture'") as info:
            tasks.load_task("texture")
        assert "'presence', 'small-mark', 'bag'" in str(info.value)


class TestCommon:
    @pytest.mark.parametrize("name", list(tasks.TASKS))
    def test_default_size_and_dtypes(self, name, loaded):
        dataset = loaded[name]
        assert 1500 <= len(dataset.y) <= 1800
        assert dataset.x.dtype == np.uint8 and dataset.y.dtype == np.int64
        assert len(dataset.class_names) == dataset.num_classes
        np.testing.assert_array_equal(np.unique(dataset.y), range(dataset.num_classes))
        assert "(seed 0)" in dataset.description

    @pytest.mark.parametrize("name", ["presence", "small-mark", "bag"])
    def test_balanced(self, name, loaded):
        counts = np.bincount(loaded[name].y)
        assert counts.max() - counts.min() <= 1

    @pytest.mark.parametrize("name", list(tasks.TASKS))
    def test_deterministic(self, name):
        first = tasks.load_task(name, samples=60)
        again = tasks.load_task(name, seed=0, samples=60)
        other = tasks.load_task(name, seed=1, samples=60)
        for a, b in zip(_arrays(first), _arrays(again), strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(first.x, other.x)
        assert "(seed 1)" in other.description

    @pytest.mark.parametrize("name", list(tasks.TASKS))
    def test_take(self, name):
        dataset = tasks.load_task(name, samples=60)
        part = dataset.take([3, 1])
        for whole, taken in zip(_arrays(dataset), _arrays(part), strict=True):
            np.testing.assert_array_equal(taken, whole[[3, 1]])


class TestInvariance:
    def test_is_translated_digits(self, loaded):
        expected = data.load_translated_digits(canvas_size=24, digit_size=8)
        np.testing.assert_array_equal(loaded["invariance"].x, expected.x)
        np.testing.assert_array_equal(loaded["invariance"].y, expected.y)

    def test_subset_keeps_every_class(self):
        subset = tasks.load_task("invariance", samples=100)
        assert subset.x.shape == (100, 24, 24, 1)
        assert np.bincount(subset.y).min() >= 9


class TestPresence:
    def test_shape(self, loaded):
        presence = loaded["presence"]
        assert presence.x.shape == (1500, 24, 24, 1)
        assert presence.class_names == ("one 0", "two 0s", "three 0s")

    def test_class_counts_the_zeros(self, loaded, lookup):
        presence = loaded["presence"]
        read = _read_cells(presence.x, lookup)
        assert np.all((read >= 0).sum(1) == 4)
        np.testing.assert_array_equal((read == 0).sum(1), presence.y + 1)
        # The other digits are all of one kind, the same in every class.
        for row in read:
            others = set(row[row > 0])
            assert len(others) == 1 and others <= {1, 4, 7}

    def test_neither_ink_nor_peak_tells_classes(self, loaded):
        presence = loaded["presence"]
        # Chance is 1/3 on 3 balanced classes.
        assert _accuracy(presence.x.mean(axis=(1, 2, 3)), presence.y) < 0.45
        assert _accuracy(presence.x.max(axis=(1, 2, 3)), presence.y) < 0.45

    def test_mean_of_a_zero_detector_counts_but_its_peak_does_not(self, loaded, digits):
        presence = loaded["presence"]
        images, labels = digits
        # A 0 scores 0.55 or more, the other kinds 0.66 at most.
        fires = _score(_cells(presence.x), images[labels == 0].mean(0)) > 0.65
        assert _accuracy(fires.mean(1), presence.y) > 0.9
        assert _accuracy(fires.max(1), presence.y) < 0.45

    def test_sizes(self):
        presence = tasks.load_presence(samples=8, classes=4, digits=6, grid=4)
        assert presence.x.shape == (8, 32, 32, 1)
        assert presence.class_names[-1] == "four 0s"


class TestSmallMark:
    def test_shape(self, loaded):
        small_mark = loaded["small-mark"]
        assert small_mark.x.shape == (1600, 32, 32, 1)
        assert small_mark.class_names == ("no 3", "one 3")

    def test_class_one_hides_exactly_one_three(self, loaded, lookup):
        small_mark = loaded["small-mark"]
        read = _read_cells(small_mark.x, lookup)
        assert np.all((read >= 0).sum(1) == 12)
        np.testing.assert_array_equal((read == 3).sum(1), small_mark.y)

    def test_ink_does_not_tell_classes(self, loaded):
        small_mark = loaded["small-mark"]
        assert _accuracy(small_mark.x.mean(axis=(1, 2, 3)), small_mark.y) < 0.6

    def test_peak_of_a_three_detector_beats_its_mean(self, loaded, digits):
        small_mark = loaded["small-mark"]
        images, labels = digits
        scores = _score(_cells(small_mark.x), images[labels == 3].mean(0))
        peak = _accuracy(scores.max(1), small_mark.y)
        mean = _accuracy(scores.mean(1), small_mark.y)
        assert peak > 0.75 and peak > mean + 0.1


class TestBags:
    def test_shapes(self, loaded):
        bags = loaded["bag"]
        assert bags.x.shape == (1600, 12, 8, 8, 1)
        assert bags.mask.shape == bags.instance_labels.shape == (1600, 12)
        assert bags.mask.dtype == bool and bags.instance_labels.dtype == np.int64

    def test_padding_is_zero_and_masked(self, loaded):
        bags = loaded["bag"]
        sizes = bags.mask.sum(1)
        # Real instances come first, then padding.
        np.testing.assert_array_equal(bags.mask, np.arange(12) < sizes[:, None])
        assert not bags.x[~bags.mask].any()
        assert bags.x[bags.mask].reshape(-1, 64).max(1).min() > NOISE_MAX
        np.testing.assert_array_equal(bags.instance_labels == -1, ~bags.mask)

    def test_sizes_vary_alike_in_both_classes(self, loaded):
        bags = loaded["bag"]
        sizes = bags.mask.sum(1)
        assert sizes.min() == 3 and sizes.max() == 12
        np.testing.assert_array_equal(np.unique(sizes), np.arange(3, 13))
        assert abs(sizes[bags.y == 0].mean() - sizes[bags.y == 1].mean()) < 0.5

    def test_positive_iff_a_nine(self, loaded, lookup):
        bags = loaded["bag"]
        read = np.full(bags.mask.shape, -1)
        for index in zip(*np.nonzero(bags.mask), strict=True):
            read[index] = lookup[_bright(bags.x[index][..., 0]).tobytes()]
        np.testing.assert_array_equal(read, bags.instance_labels)
        np.testing.assert_array_equal(np.any(read == 9, axis=1), bags.y == 1)

    @pytest.mark.parametrize(
        "field, value",
        [
            ("x", np.zeros((2, 3, 8, 8), "uint8")),
            ("mask", np.ones((2, 4), bool)),
            ("instance_labels", np.zeros((3, 3), "int64")),
            ("y", np.zeros(3, "int64")),
        ],
    )
    def test_rejects_bad_shapes(self, field, value):
        fields = {
            "x": np.zeros((2, 3, 8, 8, 1), "uint8"),
            "mask": np.ones((2, 3), bool),
            "instance_labels": np.zeros((2, 3), "int64"),
            "y": np.zeros(2, "int64"),
            "class_names": ("a", "b"),
        }
        fields[field] = value
        with pytest.raises(ValueError, match=f"Received: {field}.shape="):
            tasks.BagDataset(**fields)


@pytest.mark.parametrize(
    "load, kwargs, argument",
    [
        (tasks.load_presence, {"digits": 10}, "digits"),
        (tasks.load_presence, {"digits": 3, "classes": 3}, "digits"),
        (tasks.load_presence, {"classes": 1}, "classes"),
        (tasks.load_presence, {"grid": 0}, "grid"),
        (tasks.load_presence, {"noise": 1.5}, "noise"),
        (tasks.load_presence, {"samples": 2}, "samples"),
        (tasks.load_small_mark, {"digits": 17}, "digits"),
        (tasks.load_small_mark, {"digits": 0}, "digits"),
        (tasks.load_small_mark, {"samples": 2.5}, "samples"),
        (tasks.load_bags, {"min_size": 0}, "min_size"),
        (tasks.load_bags, {"max_size": 2}, "max_size"),
        (tasks.load_bags, {"samples": True}, "samples"),
        (tasks.TASKS["invariance"].load, {"samples": 1798}, "samples"),
    ],
)
def test_rejects_bad_arguments(load, kwargs, argument):
    with pytest.raises(ValueError, match=f"Received: {argument}="):
        load(**kwargs)
