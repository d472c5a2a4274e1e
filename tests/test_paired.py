"""Paired differences between heads: checked against SciPy's paired t-test."""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from strategies import examples

from keras_globalpool.cli.paired import (
    CONFIDENCE,
    VERDICTS,
    PairedDifference,
    against_best,
    check_seeds,
    paired_difference,
)

# Accuracies per seed: (head, reference).
CASES = {
    "undecided": ([0.79, 0.80, 0.78], [0.80, 0.82, 0.78]),
    # t = 3.46 on 2 degrees of freedom: past the normal's 1.96, short of t's 4.30.
    "normal_would_decide": ([0.81, 0.83, 0.82], [0.80, 0.80, 0.80]),
    "better": ([0.84, 0.86, 0.83, 0.85, 0.87], [0.81, 0.84, 0.82, 0.82, 0.83]),
    "worse": ([0.70, 0.72, 0.69, 0.71], [0.74, 0.75, 0.73, 0.76]),
    "ten_seeds": (
        [0.91, 0.88, 0.90, 0.93, 0.89, 0.92, 0.90, 0.87, 0.91, 0.90],
        [0.90, 0.89, 0.88, 0.92, 0.90, 0.90, 0.89, 0.88, 0.89, 0.91],
    ),
    "far_from_decided": ([0.501, 0.6, 0.4], [0.5, 0.5, 0.5]),
}
CONFIDENCES = (0.8, 0.9, CONFIDENCE, 0.99)


def brute_force_seeds_needed(mean, std, confidence):
    """The fewest seeds, 2 to 1,000, whose t interval would exclude 0."""
    if mean == 0:
        return None
    for n in range(2, 1001):
        if stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n) < abs(mean):
            return n
    return None


# === Against SciPy ===


@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_interval_and_verdict_match_ttest_rel(case, confidence):
    scores, reference_scores = CASES[case]
    result = paired_difference(scores, reference_scores, confidence=confidence)
    test = stats.ttest_rel(scores, reference_scores)
    interval = test.confidence_interval(confidence_level=confidence)
    assert result.low == pytest.approx(interval.low, rel=1e-12)
    assert result.high == pytest.approx(interval.high, rel=1e-12)
    differences = np.subtract(scores, reference_scores)
    assert result.differences == pytest.approx(differences, rel=1e-15)
    assert result.mean == pytest.approx(np.mean(differences), rel=1e-12)
    assert result.std == pytest.approx(np.std(differences, ddof=1), rel=1e-12)
    assert result.confidence == confidence
    if test.pvalue < 1 - confidence:
        expected = "better" if test.statistic > 0 else "worse"
    else:
        expected = "no detectable difference"
    assert result.verdict == expected


def test_interval_uses_t_not_the_normal():
    scores, reference_scores = CASES["normal_would_decide"]
    result = paired_difference(scores, reference_scores)
    normal_half = stats.norm.ppf(0.975) * result.std / math.sqrt(3)
    assert result.mean - normal_half > 0
    assert result.verdict == "no detectable difference"
    assert result.low < 0 < result.high


@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_seeds_needed_matches_brute_force(case, confidence):
    result = paired_difference(*CASES[case], confidence=confidence)
    expected = brute_force_seeds_needed(result.mean, result.std, confidence)
    assert result.seeds_needed == expected
    seeds = len(result.differences)
    if result.verdict == "no detectable difference":
        assert expected is None or expected > seeds
    else:
        assert expected <= seeds


def test_seeds_needed_for_the_cases():
    needed = {case: paired_difference(*CASES[case]).seeds_needed for case in CASES}
    assert needed == {
        "undecided": 7,
        "normal_would_decide": 4,
        "better": 4,
        "worse": 3,
        "ten_seeds": 31,
        "far_from_decided": None,
    }


# === Degenerate differences ===


def test_identical_scores():
    result = paired_difference([0.5, 0.75, 0.25], [0.5, 0.75, 0.25])
    assert result.differences == (0.0, 0.0, 0.0)
    assert (result.mean, result.std, result.low, result.high) == (0, 0, 0, 0)
    assert result.verdict == "no detectable difference"
    assert result.seeds_needed is None
    assert result.sentence().endswith(
        "no detectable difference; the mean difference is 0: no number of seeds "
        "would do."
    )


@pytest.mark.parametrize("difference, verdict", [(0.125, "better"), (-0.25, "worse")])
def test_constant_nonzero_difference(difference, verdict):
    reference_scores = [0.5, 0.25, 0.375]
    scores = [s + difference for s in reference_scores]
    result = paired_difference(scores, reference_scores)
    assert result.differences == (difference,) * 3
    assert result.std == 0
    assert result.low == result.high == result.mean == difference
    assert result.verdict == verdict
    assert result.seeds_needed == 2


# === The result ===


def test_sentence():
    undecided = paired_difference(*CASES["undecided"], head="max", reference="avg")
    assert undecided.sentence() == (
        "max vs avg: -1.0 points (95% CI -3.5 to +1.5) over 3 seeds: no detectable "
        "difference; about 7 seeds would tell them apart."
    )
    better = paired_difference(*CASES["better"], confidence=0.9)
    assert better.sentence() == (
        "head vs reference: +2.6 points (90% CI +1.5 to +3.7) over 5 seeds: better."
    )
    far = paired_difference(*CASES["far_from_decided"], confidence=0.975)
    assert far.sentence().endswith(
        "(97.5% CI -35.8 to +35.9) over 3 seeds: no detectable difference; "
        "more than 1,000 seeds would be needed."
    )


def test_to_json_holds_every_field_as_plain_values():
    result = paired_difference(
        np.array([0.79, 0.80, 0.78], np.float32), [0.80, 0.82, 0.78], "max", "avg"
    )
    data = result.to_json()
    assert list(data) == [field.name for field in dataclasses.fields(result)]
    assert data["differences"] == list(result.differences)
    assert json.loads(json.dumps(data)) == data
    rebuilt = PairedDifference(**{**data, "differences": tuple(data["differences"])})
    assert rebuilt == result
    for key in ("mean", "std", "low", "high", "confidence"):
        assert type(data[key]) is float
    assert all(type(d) is float for d in data["differences"])
    assert type(data["seeds_needed"]) is int
    assert data["verdict"] in VERDICTS


# === Against the best head ===


def test_against_best_picks_the_highest_mean_and_orders_by_closeness():
    scores_by_head = {
        "gem": [0.70, 0.71, 0.69],
        "max": [0.79, 0.80, 0.78],
        "avg": [0.80, 0.82, 0.78],
        "lse": [0.75, 0.78, 0.76],
    }
    results = against_best(scores_by_head)
    assert [r.head for r in results] == ["max", "lse", "gem"]
    assert {r.reference for r in results} == {"avg"}
    for result in results:
        expected = paired_difference(
            scores_by_head[result.head], scores_by_head["avg"], result.head, "avg"
        )
        assert result == expected
        assert result.mean < 0


def test_against_best_takes_the_first_of_tied_heads():
    # The same scores in another order: the same mean.
    results = against_best(
        {"avg": [0.5, 0.6, 0.7], "max": [0.7, 0.6, 0.5], "gem": [0.1, 0.2, 0.3]}
    )
    assert [(r.head, r.reference) for r in results] == [("max", "avg"), ("gem", "avg")]
    assert results[0].mean == 0


def test_against_best_passes_on_the_confidence():
    scores_by_head = {"avg": CASES["better"][0], "max": CASES["better"][1]}
    (result,) = against_best(scores_by_head, confidence=0.99)
    assert result == paired_difference(
        CASES["better"][1], CASES["better"][0], "max", "avg", confidence=0.99
    )


# === Errors ===


@pytest.mark.parametrize("seeds", [2, 3, 1000, np.int64(5)])
def test_check_seeds_accepts(seeds):
    assert check_seeds(seeds) == seeds
    assert type(check_seeds(seeds)) is int


@pytest.mark.parametrize("seeds", [1, 0, -3, 2.5, True, "3", None])
def test_check_seeds_rejects(seeds):
    message = (
        "An interval needs at least 2 seeds: `seeds` must be an integer >= 2. "
        f"Received: seeds={seeds!r}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_seeds(seeds)


@pytest.mark.parametrize(
    "scores, reference_scores, message",
    [
        (
            [0.9],
            [0.8],
            "An interval needs at least 2 seeds: `scores` must hold at least 2 "
            "scores, one per seed. Received: scores=[0.9]",
        ),
        (
            0.9,
            0.8,
            "An interval needs at least 2 seeds: `scores` must hold at least 2 "
            "scores, one per seed. Received: scores=[0.9]",
        ),
        (
            [0.9, 0.8],
            [],
            "An interval needs at least 2 seeds: `reference_scores` must hold at "
            "least 2 scores, one per seed. Received: reference_scores=[]",
        ),
        (
            [0.9, 0.8, 0.7],
            [0.8, 0.7],
            "`scores` and `reference_scores` must hold one score per seed, for the "
            "same seeds. Received: len(scores)=3, len(reference_scores)=2",
        ),
        (
            [0.9, float("nan")],
            [0.8, 0.7],
            "`scores` must hold finite numbers, one per seed. Received: scores[1]=nan",
        ),
        (
            [0.9, 0.8],
            [float("-inf"), 0.7],
            "`reference_scores` must hold finite numbers, one per seed. "
            "Received: reference_scores[0]=-inf",
        ),
        (
            ["0.9", 0.8],
            [0.8, 0.7],
            "`scores` must hold finite numbers, one per seed. "
            "Received: scores[0]='0.9'",
        ),
        (
            [True, 0.8],
            [0.8, 0.7],
            "`scores` must hold finite numbers, one per seed. Received: scores[0]=True",
        ),
    ],
)
def test_paired_difference_rejects_scores(scores, reference_scores, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        paired_difference(scores, reference_scores)


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.1, float("nan"), True, "0.95"])
def test_rejects_confidence(confidence):
    message = (
        f"`confidence` must be a number in (0, 1). Received: confidence={confidence!r}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        paired_difference([0.9, 0.8], [0.8, 0.7], confidence=confidence)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        against_best({"avg": [0.9, 0.8], "max": [0.8, 0.7]}, confidence=confidence)


@pytest.mark.parametrize(
    "scores_by_head, message",
    [
        (
            {},
            "`scores_by_head` must hold at least 2 heads to compare. "
            "Received: scores_by_head={}",
        ),
        (
            {"avg": [0.8, 0.9]},
            "`scores_by_head` must hold at least 2 heads to compare. "
            "Received: scores_by_head={'avg': [0.8, 0.9]}",
        ),
        (
            {"avg": [0.8, 0.9, 0.7], "max": [0.8, 0.9]},
            "`scores_by_head` must hold one score per seed for every head, for the "
            "same seeds. Received: scores per head {'avg': 3, 'max': 2}",
        ),
        (
            {"avg": [0.8, 0.9], "max": [0.8, float("nan")]},
            "`scores_by_head['max']` must hold finite numbers, one per seed. "
            "Received: scores_by_head['max'][1]=nan",
        ),
    ],
)
def test_against_best_rejects(scores_by_head, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        against_best(scores_by_head)


# === Properties ===


@st.composite
def paired_scores(draw):
    """Accuracies on one test set, as `compare` measures them, for 2 to 30 seeds."""
    seeds = draw(st.integers(2, 30))
    test_size = draw(st.sampled_from([10, 97, 1000, 10_000]))
    accuracy = st.integers(0, test_size).map(lambda correct: correct / test_size)
    scores = draw(st.lists(accuracy, min_size=seeds, max_size=seeds))
    reference_scores = draw(st.lists(accuracy, min_size=seeds, max_size=seeds))
    return scores, reference_scores


@settings(max_examples=examples(300))
@given(paired_scores(), st.sampled_from(CONFIDENCES))
def test_agrees_with_ttest_rel(pair, confidence):
    result = paired_difference(*pair, confidence=confidence)
    assert result.low <= result.mean <= result.high
    assert result.verdict in VERDICTS
    seeds = len(result.differences)
    if result.verdict == "no detectable difference":
        assert result.seeds_needed is None or result.seeds_needed > seeds
    else:
        assert result.seeds_needed <= seeds
    if result.std == 0:
        assert result.low == result.high == result.mean
        return
    test = stats.ttest_rel(*pair)
    interval = test.confidence_interval(confidence_level=confidence)
    assert result.low == pytest.approx(interval.low, rel=1e-9, abs=1e-12)
    assert result.high == pytest.approx(interval.high, rel=1e-9, abs=1e-12)
    alpha = 1 - confidence
    # On the boundary itself, rounding may fall either way.
    if not math.isclose(test.pvalue, alpha, rel_tol=1e-6):
        decided = result.verdict != "no detectable difference"
        assert decided == (test.pvalue < alpha)
