"""Tasks built from the embedded digits, each isolating one claim about pooling.

The design notes say which global pooling to use when: average for the
overall presence of a feature, max for one feature wherever it lies,
attention for a label per bag of instances, and any pooling rather than a
flatten head for translation invariance. Each task here is built so that
only the recommended pooling can read its label easily. Everything comes
from scikit-learn's 8x8 digits (no download), drawn with replacement, and
the same seed gives the same arrays.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from keras_globalpool.arguments import check_option, check_positive_int
from keras_globalpool.cli.data.dataset import ImageDataset, stratified_subset
from keras_globalpool.cli.data.digits import digit_pixels, load_translated_digits

# The side of one sklearn digit, and of one cell of a task's grid.
DIGIT_SIZE = 8
PRESENCE_TARGET = 0
# Kinds that do not look like a 0, so a 0 detector counts only the 0s.
PRESENCE_DISTRACTORS = (1, 4, 7)
SMALL_MARK_TARGET = 3
BAG_TARGET = 9
_COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")


@dataclasses.dataclass(frozen=True)
class BagDataset:
    """Bags of 8x8 digit instances, padded to one length, with a label per bag.

    Args:
        x: `uint8` array of shape `(bags, max_bag, 8, 8, 1)`, pixels in
            [0, 255]; padded instances are all zeros.
        mask: bool array of shape `(bags, max_bag)`. `True` where an
            instance is real, `False` where it is padding.
        instance_labels: int array of shape `(bags, max_bag)`. The digit
            of each instance, `-1` for padding.
        y: int array of shape `(bags,)`, class ids in
            `[0, len(class_names))`.
        class_names: tuple of strings, one per class.
        description: string. How the bags were made, for reports.

    Example:

    >>> data = BagDataset(
    ...     np.zeros((2, 3, 8, 8, 1), "uint8"), np.ones((2, 3), bool),
    ...     np.zeros((2, 3), "int64"), np.array([0, 1]), ("a", "b"))
    >>> data.num_classes, data.take([1]).x.shape
    (2, (1, 3, 8, 8, 1))
    """

    x: np.ndarray
    mask: np.ndarray
    instance_labels: np.ndarray
    y: np.ndarray
    class_names: tuple
    description: str = ""

    def __post_init__(self):
        if self.x.ndim != 5:
            raise ValueError(
                "`x` must have shape (bags, max_bag, height, width, channels). "
                f"Received: x.shape={self.x.shape}"
            )
        for name in ("mask", "instance_labels"):
            shape = getattr(self, name).shape
            if shape != self.x.shape[:2]:
                raise ValueError(
                    f"`{name}` must have one entry per instance, shape "
                    f"{self.x.shape[:2]}. Received: {name}.shape={shape}"
                )
        if self.y.shape != (len(self.x),):
            raise ValueError(
                f"`y` must hold one label per bag, shape ({len(self.x)},). "
                f"Received: y.shape={self.y.shape}"
            )

    @property
    def num_classes(self):
        return len(self.class_names)

    def take(self, indices):
        """Returns the bags at `indices` as a new `BagDataset`."""
        return dataclasses.replace(
            self,
            x=self.x[indices],
            mask=self.mask[indices],
            instance_labels=self.instance_labels[indices],
            y=self.y[indices],
        )


@dataclasses.dataclass(frozen=True)
class Task:
    """A data set built to test one claim of the design notes.

    Args:
        name: string. The key in `TASKS`.
        claim: string. Which pooling the notes say wins, and at what.
        favours: tuple of pooling names the claim predicts win.
        isolates: string. Why the task tests that claim and no other.
        load: callable `(seed=0, samples=...)` returning an `ImageDataset`
            or a `BagDataset`.
        heads: tuple of the heads `compare --task` trains by default: the
            favoured ones and those they should beat.

    Example:

    >>> TASKS["presence"].favours
    ('avg',)
    """

    name: str
    claim: str
    favours: tuple
    isolates: str
    load: Callable
    heads: tuple


def load_presence(samples=1500, classes=3, digits=4, grid=3, noise=0.25, seed=0):
    """Images whose class is how many of their digits are 0s.

    A `grid` x `grid` canvas of 8x8 cells holds `digits` digits in random
    cells: `c + 1` of them are 0s and the rest are all one other kind (1, 4
    or 7, drawn per image), so every image shows a 0 and a distractor and
    only the count of 0s sets the class `c`. Background noise is as in
    `load_translated_digits`.

    Args:
        samples: int. The number of images. Defaults to `1500`.
        classes: int >= 2. The number of classes; class `c` has `c + 1`
            0s. Defaults to `3`.
        digits: int in [classes + 1, grid**2]. Digits per image. Defaults
            to `4`.
        grid: int >= 1. Cells per side; the images are `8 * grid` pixels
            square. Defaults to `3`.
        noise: float in [0, 1]. The noise's upper bound, as a fraction of
            full brightness. Defaults to `0.25`.
        seed: int. Fixes every draw. Defaults to `0`.

    Returns:
        `ImageDataset` with `x` of shape `(samples, 8 * grid, 8 * grid,
        1)`, `uint8`, and balanced labels 0 to `classes - 1`.

    Example:

    >>> data = load_presence(samples=6)
    >>> data.x.shape, data.class_names
    ((6, 24, 24, 1), ('one 0', 'two 0s', 'three 0s'))
    """
    _check_range("classes", classes, 2, np.inf)
    _check_grid(digits, grid, noise, min_digits=classes + 1)
    rng, y = _balanced_labels(samples, classes, seed)
    images, labels = digit_pixels()
    distractors = rng.choice(PRESENCE_DISTRACTORS, size=(samples, 1))
    kinds = np.where(np.arange(digits) <= y[:, None], PRESENCE_TARGET, distractors)
    ids = np.zeros(kinds.shape, "int64")
    for kind in np.unique(kinds):
        where = kinds == kind
        ids[where] = rng.choice(np.flatnonzero(labels == kind), size=where.sum())
    return ImageDataset(
        x=_grid_images(rng, images[ids], grid, noise),
        y=y,
        class_names=tuple(_count_name(c + 1, PRESENCE_TARGET) for c in range(classes)),
        description=(
            f"presence: {digits} digits in a {grid}x{grid} grid of 8x8 cells, "
            f"1 to {classes} of them 0s (seed {seed})"
        ),
    )


def load_small_mark(samples=1600, digits=12, grid=4, noise=0.25, seed=0):
    """Images full of digits, where class 1 hides a single 3 among them.

    A `grid` x `grid` canvas of 8x8 cells holds `digits` digits in random
    cells, drawn from every kind but 3. In class 1 one of them, at random,
    is a 3 instead; class 0 has none. Both classes have as many digits and
    about as much ink. Background noise is as in `load_translated_digits`.

    Args:
        samples: int. The number of images. Defaults to `1600`.
        digits: int in [1, grid**2]. Digits per image. Defaults to `12`.
        grid: int >= 1. Cells per side; the images are `8 * grid` pixels
            square. Defaults to `4`.
        noise: float in [0, 1]. The noise's upper bound, as a fraction of
            full brightness. Defaults to `0.25`.
        seed: int. Fixes every draw. Defaults to `0`.

    Returns:
        `ImageDataset` with `x` of shape `(samples, 8 * grid, 8 * grid,
        1)`, `uint8`, and balanced labels 0 and 1.

    Example:

    >>> data = load_small_mark(samples=4)
    >>> data.x.shape, data.class_names
    ((4, 32, 32, 1), ('no 3', 'one 3'))
    """
    _check_grid(digits, grid, noise, min_digits=1)
    rng, y = _balanced_labels(samples, 2, seed)
    images, labels = digit_pixels()
    ids = rng.choice(np.flatnonzero(labels != SMALL_MARK_TARGET), (samples, digits))
    # Cells are shuffled later, so the first digit lands in a random cell.
    marked = np.flatnonzero(y == 1)
    targets = np.flatnonzero(labels == SMALL_MARK_TARGET)
    ids[marked, 0] = rng.choice(targets, size=len(marked))
    return ImageDataset(
        x=_grid_images(rng, images[ids], grid, noise),
        y=y,
        class_names=tuple(_count_name(c, SMALL_MARK_TARGET) for c in range(2)),
        description=(
            f"small mark: {digits} digits in a {grid}x{grid} grid of 8x8 cells, "
            f"class 1 with one 3 among them (seed {seed})"
        ),
    )


def load_bags(samples=1600, min_size=3, max_size=12, seed=0):
    """Bags of digits, positive when they hold at least one 9 (MNIST-bags).

    Each bag has a size drawn uniformly in `[min_size, max_size]`, the same
    way in both classes. A negative bag draws its digits from every kind
    but 9; a positive bag draws from every kind, and one random instance
    becomes a 9 if none is, as in Ilse et al. (2018). Bags are padded with
    all-zero instances to `max_size`.

    Args:
        samples: int. The number of bags. Defaults to `1600`.
        min_size: int >= 1. The fewest instances in a bag. Defaults to `3`.
        max_size: int >= `min_size`. The most instances in a bag, and the
            padded length. Defaults to `12`.
        seed: int. Fixes every draw. Defaults to `0`.

    Returns:
        `BagDataset` with `x` of shape `(samples, max_size, 8, 8, 1)`,
        `uint8`, and balanced labels 0 (no 9) and 1.

    Example:

    >>> data = load_bags(samples=4)
    >>> data.x.shape, data.mask.shape, data.class_names
    ((4, 12, 8, 8, 1), (4, 12), ('no 9', 'a 9'))
    """
    check_positive_int("min_size", min_size)
    _check_range("max_size", max_size, min_size, np.inf)
    rng, y = _balanced_labels(samples, 2, seed)
    images, labels = digit_pixels()
    sizes = rng.integers(min_size, max_size + 1, size=samples)
    mask = np.arange(max_size) < sizes[:, None]
    negatives = np.flatnonzero(labels != BAG_TARGET)
    ids = np.where(
        y[:, None] == 1,
        rng.integers(0, len(labels), size=(samples, max_size)),
        rng.choice(negatives, size=(samples, max_size)),
    )
    lacking = np.flatnonzero((y == 1) & ~np.any(mask & (labels[ids] == BAG_TARGET), 1))
    slots = rng.integers(0, sizes[lacking])
    nines = np.flatnonzero(labels == BAG_TARGET)
    ids[lacking, slots] = rng.choice(nines, size=len(lacking))
    pixels = np.round(images[ids])[..., None].astype("uint8")
    return BagDataset(
        x=np.where(mask[..., None, None, None], pixels, np.uint8(0)),
        mask=mask,
        instance_labels=np.where(mask, labels[ids], -1).astype("int64"),
        y=y,
        class_names=("no 9", "a 9"),
        description=(
            f"bags: {min_size} to {max_size} 8x8 digits, positive when one is "
            f"a 9 (seed {seed})"
        ),
    )


def load_task(name, seed=0, samples=None):
    """Loads the data set of the task `name` in `TASKS`.

    Args:
        name: string. One of `TASKS`.
        seed: int. Fixes every draw. Defaults to `0`.
        samples: optional int. The number of images or bags. Defaults to
            `None`, the task's own default.

    Returns:
        `ImageDataset`, or `BagDataset` for `"bag"`.

    Example:

    >>> load_task("small-mark", samples=4).x.shape
    (4, 32, 32, 1)
    """
    check_option("task", name, tuple(TASKS))
    if samples is None:
        return TASKS[name].load(seed=seed)
    return TASKS[name].load(seed=seed, samples=samples)


def _load_invariance(seed=0, samples=1797):
    """`load_translated_digits` at 8x8 on 24x24, or a stratified subset."""
    _check_range("samples", samples, 10, 1797)
    data = load_translated_digits(canvas_size=24, digit_size=DIGIT_SIZE, seed=seed)
    return stratified_subset(data, samples, seed=seed)


def _check_range(name, value, low, high):
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not (is_int and low <= value <= high):
        raise ValueError(
            f"`{name}` must be an integer in [{low}, {high}]. "
            f"Received: {name}={value!r}"
        )


def _balanced_labels(samples, num_classes, seed):
    """A generator for `seed` and `samples` shuffled labels, equal counts +-1."""
    _check_range("samples", samples, num_classes, np.inf)
    rng = np.random.default_rng(seed)
    return rng, rng.permutation(np.arange(samples) % num_classes).astype("int64")


def _check_grid(digits, grid, noise, min_digits):
    check_positive_int("grid", grid)
    _check_range("digits", digits, min_digits, grid * grid)
    if not 0 <= noise <= 1:
        raise ValueError(f"`noise` must be in [0, 1]. Received: noise={noise!r}")


def _count_name(count, kind):
    word = _COUNT_WORDS[count] if count < len(_COUNT_WORDS) else str(count)
    return f"{word} {kind}" + ("s" if count > 1 else "")


def _grid_images(rng, digits, grid, noise):
    """`digits` of shape `(samples, k, 8, 8)` in random cells, on noise."""
    samples, count = digits.shape[:2]
    order = rng.permuted(np.tile(np.arange(grid * grid), (samples, 1)), axis=1)
    cells = np.zeros((samples, grid * grid, DIGIT_SIZE, DIGIT_SIZE), "float32")
    cells[np.arange(samples)[:, None], order[:, :count]] = digits
    side = grid * DIGIT_SIZE
    canvas = (
        cells.reshape(samples, grid, grid, DIGIT_SIZE, DIGIT_SIZE)
        .transpose(0, 1, 3, 2, 4)
        .reshape(samples, side, side)
    )
    background = rng.uniform(0.0, noise * 255.0, size=canvas.shape)
    return np.round(np.maximum(canvas, background))[..., None].astype("uint8")


TASKS = {
    task.name: task
    for task in (
        Task(
            name="invariance",
            claim=(
                "Any global pooling beats a flatten head when a digit may lie "
                "anywhere: pooling is translation invariant and has few weights."
            ),
            favours=("avg", "max", "mixed", "attention", "gem"),
            isolates=(
                "Each 8x8 digit lies at a random place on a noisy 24x24 canvas: "
                "the class never depends on the place, and a flatten head must "
                "learn every digit at every place."
            ),
            load=_load_invariance,
            heads=("flatten", "avg", "max", "mixed", "attention", "gem"),
        ),
        Task(
            name="presence",
            claim=(
                "Average pooling wins where the overall presence, the amount, "
                "of a feature decides the class."
            ),
            favours=("avg",),
            isolates=(
                "Every image has 4 digits, at least one 0 and one other kind, "
                "and the class is how many are 0s: a 0 detector peaks alike in "
                "every class, only its mean over the image counts the 0s."
            ),
            load=load_presence,
            heads=("avg", "max", "mixed", "attention", "lse"),
        ),
        Task(
            name="small-mark",
            claim=(
                "Max pooling, and attention or log-sum-exp that can focus on a "
                "peak, wins at detecting one specific feature wherever it lies."
            ),
            favours=("max", "attention", "lse"),
            isolates=(
                "Every image has 12 digits and about the same ink, and class 1 "
                "swaps one for a 3 covering 1/16 of the canvas: a mean dilutes "
                "it among the distractors, a peak keeps it."
            ),
            load=load_small_mark,
            heads=("avg", "max", "mixed", "attention", "lse"),
        ),
        Task(
            name="bag",
            claim=(
                "Attention and gated-attention pooling win where one label "
                "belongs to a bag of instances of varying size (multiple "
                "instance learning)."
            ),
            favours=("gated_attention", "attention"),
            isolates=(
                "A bag of 3 to 12 digits is positive when one of them is a 9, "
                "with sizes drawn alike in both classes: the label rests on "
                "one instance, and the padding must be masked out."
            ),
            load=load_bags,
            heads=("avg", "max", "attention", "gated_attention"),
        ),
    )
}
