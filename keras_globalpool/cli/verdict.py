"""Which head won: the best accuracy, and which heads are within its noise."""


def _within_noise(best, results):
    """Heads whose mean ± std overlaps the best head's."""
    low = best.accuracy_mean - best.accuracy_std
    return [
        r.head
        for r in results
        if r is not best and r.accuracy_mean + r.accuracy_std >= low
    ]


def summary(results):
    """The winners on accuracy and on accuracy per trained parameter.

    Args:
        results: non-empty list of `HeadResult`.

    Returns:
        dict with `best_accuracy` and `best_accuracy_per_parameter` (head
        names) and `lines`, the sentences that say so.
    """
    best = max(results, key=lambda r: r.accuracy_mean)
    thrifty = max(results, key=lambda r: r.accuracy_mean / r.trainable_params)
    lines = [
        f"Best accuracy: {best.head} ({best.accuracy_mean:.1%} ± "
        f"{best.accuracy_std:.1%} over {len(best.accuracies)} seed(s))."
    ]
    close = _within_noise(best, results)
    if len(best.accuracies) > 1 and close:
        lines.append(
            f"Within one standard deviation of it: {', '.join(close)}; "
            "more seeds would be needed to rank those."
        )
    per_1k = 1000 * thrifty.accuracy_mean / thrifty.trainable_params
    lines.append(
        f"Best accuracy per trained parameter: {thrifty.head} "
        f"({thrifty.accuracy_mean:.1%} with {thrifty.trainable_params:,} trained "
        f"parameters, {per_1k:.2%} per 1,000)."
    )
    return {
        "best_accuracy": best.head,
        "best_accuracy_per_parameter": thrifty.head,
        "lines": lines,
    }
