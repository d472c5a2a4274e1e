"""The comparison chart: accuracy and training time per head."""

import textwrap

from keras_globalpool.viz.plotting import new_figure


def plot(results, path, title):
    """Saves bar charts of accuracy (mean ± std) and training time per head."""
    heads = [r.head for r in results]
    figure = new_figure(figsize=(10, 4))
    accuracy_axes, time_axes = figure.subplots(1, 2)
    accuracy_axes.bar(
        heads,
        [100 * r.accuracy_mean for r in results],
        yerr=[100 * r.accuracy_std for r in results],
        capsize=4,
        color="tab:blue",
    )
    accuracy_axes.set(ylabel="test accuracy (%)", ylim=(0, 100), title="accuracy")
    time_axes.bar(heads, [r.train_seconds_mean for r in results], color="tab:orange")
    time_axes.set(ylabel="training time (s, mean over seeds)", title="training time")
    for axes in (accuracy_axes, time_axes):
        axes.tick_params(axis="x", rotation=30)
    figure.suptitle(textwrap.fill(title, 110), fontsize=10)
    figure.savefig(path, dpi=100)
