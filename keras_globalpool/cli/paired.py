"""Paired differences between heads trained on the same seeds, with a t interval.

Each seed gives every head the same split, initialization and batch order, so
the per-seed difference between two heads cancels what the seed does to both.
A Student-t confidence interval of the mean difference then says whether one
head is better, worse, or not told apart from the other with these seeds.
"""

import dataclasses
import math
import numbers
import statistics

import numpy as np
from scipy import stats

from keras_globalpool.arguments import is_positive_int

CONFIDENCE = 0.95
VERDICTS = ("better", "worse", "no detectable difference")
# The most seeds `seeds_needed` looks for: more is no plan for a comparison.
MAX_SEEDS = 1000


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """How one head's scores differ from a reference head's, seed by seed.

    Built by `paired_difference` and `against_best`. Scores are accuracies in
    [0, 1]; `sentence` shows their differences in percentage points.

    Args:
        head: string. The head compared.
        reference: string. The head it is compared with.
        differences: tuple of floats. Per seed, the head's score minus the
            reference's.
        mean: float. The mean difference.
        std: float. The sample standard deviation (ddof=1) of the differences.
        low: float. The lower end of the t interval of the mean difference.
        high: float. Its upper end.
        confidence: float. The interval's confidence level, in (0, 1).
        verdict: string. `"better"` if `low > 0`, `"worse"` if `high < 0`,
            else `"no detectable difference"`.
        seeds_needed: int or `None`. The fewest seeds whose interval would
            exclude 0 with this mean and std; `None` if the mean is 0 or more
            than 1,000 seeds would be needed.
    """

    head: str
    reference: str
    differences: tuple
    mean: float
    std: float
    low: float
    high: float
    confidence: float
    verdict: str
    seeds_needed: int | None

    def to_json(self):
        """Every field, as plain Python values for `json.dump`.

        Returns:
            dict from field name to value; `differences` is a list.

        Example:

        >>> paired_difference([0.5, 0.75], [0.25, 0.5]).to_json()["differences"]
        [0.25, 0.25]
        """
        return {**dataclasses.asdict(self), "differences": list(self.differences)}

    def sentence(self):
        """The difference, its interval and the verdict, in one sentence.

        Returns:
            string.

        Example:

        >>> paired_difference([0.5, 0.75], [0.25, 0.5], "max", "avg").sentence()
        'max vs avg: +25.0 points (95% CI +25.0 to +25.0) over 2 seeds: better.'
        """
        text = (
            f"{self.head} vs {self.reference}: {100 * self.mean:+.1f} points "
            f"({100 * self.confidence:.4g}% CI {100 * self.low:+.1f} to "
            f"{100 * self.high:+.1f}) over {len(self.differences)} seeds: "
            f"{self.verdict}"
        )
        if self.verdict != "no detectable difference":
            return f"{text}."
        if self.mean == 0:
            return f"{text}; the mean difference is 0: no number of seeds would do."
        if self.seeds_needed is None:
            return f"{text}; more than {MAX_SEEDS:,} seeds would be needed."
        return f"{text}; about {self.seeds_needed} seeds would tell them apart."


def check_seeds(seeds):
    """Raises a `ValueError` unless `seeds` is an integer >= 2.

    Args:
        seeds: the number of seeds received.

    Returns:
        `seeds`, as a Python int.

    Example:

    >>> check_seeds(3)
    3
    >>> check_seeds(1)
    Traceback (most recent call last):
    ValueError: An interval needs at least 2 seeds: `seeds` must be an integer >= 2. Received: seeds=1
    """  # noqa: E501
    if not (is_positive_int(seeds) and seeds >= 2):
        raise ValueError(
            "An interval needs at least 2 seeds: `seeds` must be an integer >= 2. "
            f"Received: seeds={seeds!r}"
        )
    return int(seeds)


def _check_confidence(confidence):
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, numbers.Real)
        or not 0 < confidence < 1
    ):
        raise ValueError(
            "`confidence` must be a number in (0, 1). "
            f"Received: confidence={confidence!r}"
        )
    return float(confidence)


def _check_scores(name, scores):
    """`scores` as a tuple of floats: finite numbers, one per seed, at least 2."""
    values = tuple(scores) if np.iterable(scores) else (scores,)
    for i, value in enumerate(values):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
        ):
            raise ValueError(
                f"`{name}` must hold finite numbers, one per seed. "
                f"Received: {name}[{i}]={value!r}"
            )
    values = tuple(float(v) for v in values)
    if len(values) < 2:
        raise ValueError(
            f"An interval needs at least 2 seeds: `{name}` must hold at least 2 "
            f"scores, one per seed. Received: {name}={list(values)!r}"
        )
    return values


def _half_width(std, seeds, confidence):
    """Half the t interval's width, for one number of seeds or an array of them."""
    quantile = stats.t.ppf((1 + confidence) / 2, seeds - 1)
    return quantile * std / np.sqrt(seeds)


def mean_interval(scores, confidence=CONFIDENCE):
    """The Student-t confidence interval of the mean of one head's scores.

    Args:
        scores: sequence of floats, one per seed, at least 2.
        confidence: float in (0, 1). Defaults to `0.95`.

    Returns:
        Tuple `(mean, low, high)` of floats.

    Example:

    >>> [round(v, 4) for v in mean_interval([0.8, 0.82, 0.78])]
    [0.8, 0.7503, 0.8497]
    """
    confidence = _check_confidence(confidence)
    scores = _check_scores("scores", scores)
    mean = statistics.fmean(scores)
    half = float(_half_width(statistics.stdev(scores), len(scores), confidence))
    return mean, mean - half, mean + half


def _seeds_needed(mean, std, confidence):
    if mean == 0:
        return None
    seeds = np.arange(2, MAX_SEEDS + 1)
    (enough,) = np.nonzero(_half_width(std, seeds, confidence) < abs(mean))
    return int(seeds[enough[0]]) if enough.size else None


def _paired(head, reference, scores, reference_scores, confidence):
    """`paired_difference` on checked scores of the same length."""
    differences = tuple(a - b for a, b in zip(scores, reference_scores, strict=True))
    mean = statistics.fmean(differences)
    std = statistics.stdev(differences)
    half = float(_half_width(std, len(differences), confidence))
    low, high = mean - half, mean + half
    if low > 0:
        verdict = "better"
    elif high < 0:
        verdict = "worse"
    else:
        verdict = "no detectable difference"
    return PairedDifference(
        head=head,
        reference=reference,
        differences=differences,
        mean=mean,
        std=std,
        low=low,
        high=high,
        confidence=confidence,
        verdict=verdict,
        seeds_needed=_seeds_needed(mean, std, confidence),
    )


def paired_difference(
    scores, reference_scores, head="head", reference="reference", confidence=CONFIDENCE
):
    """Compares two heads' scores seed by seed, with a Student-t interval.

    Use it on heads trained with the same seeds, where seed `i` gave both the
    same split, initialization and batch order: the interval is that of the
    mean of the per-seed differences, `mean ± t · std / √n`.

    Args:
        scores: sequence of floats. The head's score for each seed.
        reference_scores: sequence of floats. The reference head's score for
            the same seeds, in the same order.
        head: string. The head's name. Defaults to `"head"`.
        reference: string. The reference head's name. Defaults to
            `"reference"`.
        confidence: float in (0, 1). The interval's confidence level.
            Defaults to `0.95`.

    Returns:
        A `PairedDifference`.

    Example:

    >>> result = paired_difference(
    ...     [0.79, 0.80, 0.78], [0.80, 0.82, 0.78], head="max", reference="avg"
    ... )
    >>> result.verdict, result.seeds_needed
    ('no detectable difference', 7)
    >>> print(result.sentence())  # doctest: +NORMALIZE_WHITESPACE
    max vs avg: -1.0 points (95% CI -3.5 to +1.5) over 3 seeds: no detectable
    difference; about 7 seeds would tell them apart.
    """
    confidence = _check_confidence(confidence)
    scores = _check_scores("scores", scores)
    reference_scores = _check_scores("reference_scores", reference_scores)
    if len(scores) != len(reference_scores):
        raise ValueError(
            "`scores` and `reference_scores` must hold one score per seed, for "
            f"the same seeds. Received: len(scores)={len(scores)}, "
            f"len(reference_scores)={len(reference_scores)}"
        )
    return _paired(head, reference, scores, reference_scores, confidence)


def against_best(scores_by_head, confidence=CONFIDENCE):
    """Compares every head with the best one, seed by seed.

    The best head has the highest mean score; of heads that tie, the first.

    Args:
        scores_by_head: dict from head name to its scores, one per seed, the
            same seeds in the same order for every head. At least 2 heads.
        confidence: float in (0, 1). The intervals' confidence level.
            Defaults to `0.95`.

    Returns:
        list of `PairedDifference`, one per head other than the best, each
        that head minus the best, from the closest to the best to the
        farthest.

    Example:

    >>> results = against_best({
    ...     "avg": [0.80, 0.82, 0.78],
    ...     "max": [0.79, 0.80, 0.78],
    ...     "gem": [0.70, 0.71, 0.69],
    ... })
    >>> for result in results:  # doctest: +NORMALIZE_WHITESPACE
    ...     print(result.sentence())
    max vs avg: -1.0 points (95% CI -3.5 to +1.5) over 3 seeds: no detectable
    difference; about 7 seeds would tell them apart.
    gem vs avg: -10.0 points (95% CI -12.5 to -7.5) over 3 seeds: worse.
    """
    confidence = _check_confidence(confidence)
    if len(scores_by_head) < 2:
        raise ValueError(
            "`scores_by_head` must hold at least 2 heads to compare. "
            f"Received: scores_by_head={scores_by_head!r}"
        )
    checked = {
        head: _check_scores(f"scores_by_head[{head!r}]", scores)
        for head, scores in scores_by_head.items()
    }
    lengths = {head: len(scores) for head, scores in checked.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            "`scores_by_head` must hold one score per seed for every head, for "
            f"the same seeds. Received: scores per head {lengths!r}"
        )
    best = max(checked, key=lambda head: statistics.fmean(checked[head]))
    results = [
        _paired(head, best, scores, checked[best], confidence)
        for head, scores in checked.items()
        if head != best
    ]
    return sorted(results, key=lambda result: -result.mean)
