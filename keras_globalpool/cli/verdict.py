"""Which head won: the best accuracy, and how sure, by paired differences."""

from keras_globalpool.cli.paired import against_best, paired_difference

# The baseline every pooling head is also compared with, when it was trained.
BASELINE = "flatten"


def paired_comparisons(results):
    """Every head against the best head and against the flatten baseline.

    Heads are paired by seed: seed `i` gave each the same split,
    initialization and batch order.

    Args:
        results: list of `HeadResult`, every one with the same seeds.

    Returns:
        dict with `against_best` and `against_baseline`, lists of
        `PairedDifference` (empty with fewer than 2 heads or 2 seeds, or,
        for the baseline, without a flatten head).
    """
    scores = {r.head: r.accuracies for r in results}
    if len(scores) < 2 or min(len(s) for s in scores.values()) < 2:
        return {"against_best": [], "against_baseline": []}
    baseline = [
        paired_difference(s, scores[BASELINE], head, BASELINE)
        for head, s in scores.items()
        if BASELINE in scores and head != BASELINE
    ]
    return {"against_best": against_best(scores), "against_baseline": baseline}


def summary(results):
    """The winners on accuracy and on accuracy per trained parameter.

    Args:
        results: non-empty list of `HeadResult`.

    Returns:
        dict with `best_accuracy` and `best_accuracy_per_parameter` (head
        names), `paired` (the `paired_comparisons` as JSON) and `lines`, the
        sentences that say so.
    """
    best = max(results, key=lambda r: r.accuracy_mean)
    thrifty = max(results, key=lambda r: r.accuracy_mean / r.trainable_params)
    lines = [
        f"Best accuracy: {best.head} ({best.accuracy_mean:.1%} ± "
        f"{best.accuracy_std:.1%} over {len(best.accuracies)} seed(s))."
    ]
    paired = paired_comparisons(results)
    if paired["against_best"]:
        lines.append("Paired by seed, against the best head:")
        lines += [f"- {p.sentence()}" for p in paired["against_best"]]
    if paired["against_baseline"]:
        lines.append(f"Paired by seed, against the {BASELINE} baseline:")
        lines += [f"- {p.sentence()}" for p in paired["against_baseline"]]
    if len(best.accuracies) < 2 and len(results) > 1:
        lines.append("With one seed, no head can be told apart from another.")
    per_1k = 1000 * thrifty.accuracy_mean / thrifty.trainable_params
    lines.append(
        f"Best accuracy per trained parameter: {thrifty.head} "
        f"({thrifty.accuracy_mean:.1%} with {thrifty.trainable_params:,} trained "
        f"parameters, {per_1k:.2%} per 1,000)."
    )
    return {
        "best_accuracy": best.head,
        "best_accuracy_per_parameter": thrifty.head,
        "paired": {
            name: [p.to_json() for p in comparisons]
            for name, comparisons in paired.items()
        },
        "lines": lines,
    }
