"""The design notes' claims about pooling, judged by the task suite's results.

Each claim names, per task, the heads it says win and the heads they should
beat. Its verdict rests on the paired differences of those pairs:
`"supports"` when every pair measured is better, `"contradicts"` when any
is worse, `"cannot decide"` otherwise, and `"not measured"` when the suite
trained none of the pairs.
"""

import dataclasses

from keras_globalpool.cli.paired import paired_difference

CLAIM_VERDICTS = ("supports", "contradicts", "cannot decide", "not measured")
_POOLINGS = ("avg", "max", "mixed", "attention", "gem")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One piece of advice of the design notes, and how the suite tests it.

    Args:
        advice: string. The advice, in our words.
        tests: tuple of `(task, winners, losers)`: in `task`, each head of
            `winners` should beat each head of `losers`.
    """

    advice: str
    tests: tuple


CLAIMS = (
    Claim(
        "Any global pooling instead of a flatten head: translation invariance.",
        (("invariance", _POOLINGS, ("flatten",)),),
    ),
    Claim(
        "Average pooling for the overall presence of a feature.",
        (("presence", ("avg",), ("max",)),),
    ),
    Claim(
        "Max pooling for detecting a specific feature wherever it appears.",
        (("small-mark", ("max",), ("avg",)),),
    ),
    Claim(
        "Mixed pooling (average and max) for both at once.",
        (("presence", ("mixed",), ("max",)), ("small-mark", ("mixed",), ("avg",))),
    ),
    Claim(
        "Attention pooling where the signal covers a small region, and for a "
        "label per bag of instances.",
        (
            ("small-mark", ("attention",), ("avg",)),
            ("bag", ("gated_attention", "attention"), ("avg", "max")),
        ),
    ),
)


def judge(claim, scores_by_task):
    """The verdict on `claim` and the paired differences it rests on.

    Args:
        claim: `Claim`.
        scores_by_task: dict from task name to a dict from head to its
            accuracies, one per seed, the seeds paired across heads.

    Returns:
        dict with `advice`, `verdict` (one of `CLAIM_VERDICTS`) and
        `evidence`, a list of `(task, PairedDifference)`.

    Example:

    >>> scores = {"presence": {"avg": [0.9, 0.92, 0.91], "max": [0.8, 0.83, 0.8]}}
    >>> judge(CLAIMS[1], scores)["verdict"]
    'supports'
    """
    evidence = []
    for task, winners, losers in claim.tests:
        scores = scores_by_task.get(task, {})
        evidence += [
            (task, paired_difference(scores[w], scores[b], w, b))
            for w in winners
            for b in losers
            if w in scores and b in scores and len(scores[w]) > 1
        ]
    verdicts = {difference.verdict for _, difference in evidence}
    if not evidence:
        verdict = "not measured"
    elif "worse" in verdicts:
        verdict = "contradicts"
    elif verdicts == {"better"}:
        verdict = "supports"
    else:
        verdict = "cannot decide"
    return {"advice": claim.advice, "verdict": verdict, "evidence": evidence}
