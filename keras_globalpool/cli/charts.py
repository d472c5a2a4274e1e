"""The comparison charts: accuracy with its interval, and paired differences."""

import textwrap

from keras_globalpool.cli.paired import CONFIDENCE, mean_interval
from keras_globalpool.viz.plotting import new_figure


def _accuracy_errors(results):
    """Per head, the bar's mean and its error bars: the t interval, or none."""
    means, errors = [], [[], []]
    for r in results:
        if len(r.accuracies) < 2:
            mean, low, high = r.accuracy_mean, r.accuracy_mean, r.accuracy_mean
        else:
            mean, low, high = mean_interval(r.accuracies)
        means.append(100 * mean)
        errors[0].append(100 * (mean - low))
        errors[1].append(100 * (high - mean))
    return means, errors


def plot(results, path, title):
    """Saves bar charts of accuracy and training time per head.

    The accuracy bars carry the 95% Student-t interval of their mean over the
    seeds (none with one seed).

    Args:
        results: list of `HeadResult`.
        path: where to write the PNG.
        title: string. The figure's title.
    """
    heads = [r.head for r in results]
    figure = new_figure(figsize=(10, 4))
    accuracy_axes, time_axes = figure.subplots(1, 2)
    means, errors = _accuracy_errors(results)
    accuracy_axes.bar(heads, means, yerr=errors, capsize=4, color="tab:blue")
    accuracy_axes.set(
        ylabel="test accuracy (%)",
        ylim=(0, 100),
        title=f"accuracy, mean and {CONFIDENCE:.0%} interval over seeds",
    )
    time_axes.bar(heads, [r.train_seconds_mean for r in results], color="tab:orange")
    time_axes.set(ylabel="training time (s, mean over seeds)", title="training time")
    for axes in (accuracy_axes, time_axes):
        axes.tick_params(axis="x", rotation=30)
    figure.suptitle(textwrap.fill(title, 110), fontsize=10)
    figure.savefig(path, dpi=100)


_VERDICT_COLORS = {
    "better": "tab:green",
    "worse": "tab:red",
    "no detectable difference": "tab:gray",
}


def plot_paired(differences, path, title):
    """Saves each head's paired difference from a reference, with its interval.

    Args:
        differences: non-empty list of `PairedDifference` with one reference.
        path: where to write the PNG.
        title: string. The figure's title.
    """
    figure = new_figure(figsize=(7, 0.5 * len(differences) + 1.6))
    axes = figure.subplots()
    rows = range(len(differences))
    for row, d in zip(rows, differences, strict=True):
        axes.errorbar(
            100 * d.mean,
            row,
            xerr=[[100 * (d.mean - d.low)], [100 * (d.high - d.mean)]],
            fmt="o",
            capsize=4,
            color=_VERDICT_COLORS[d.verdict],
        )
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(list(rows), [d.head for d in differences])
    axes.invert_yaxis()
    reference = differences[0].reference
    axes.set(
        xlabel=f"accuracy minus {reference}'s, same seed (points); "
        f"{differences[0].confidence:.0%} interval",
    )
    axes.set_title(textwrap.fill(title, 80), fontsize=10)
    figure.savefig(path, dpi=100)
