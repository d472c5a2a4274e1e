"""The results of `compare`: the table, the summary, and the report folder.

The folder holds `report.json` (every number, for machines), `report.md`
(the table and how each column was measured, for people) and
`comparison.png` (accuracy and training time per head).
"""

import dataclasses
import json
import pathlib
import statistics
import textwrap

from rich.table import Table

from keras_globalpool.viz.overlay_grid import heatmap_grid
from keras_globalpool.viz.plotting import new_figure

COLUMNS = (
    "head",
    "head params",
    "total params",
    "test accuracy",
    "train time (s)",
    "time / epoch (s)",
    "peak memory (MiB)",
    "latency / image (ms)",
)


@dataclasses.dataclass
class HeadResult:
    """What `compare` measured for one head, over every seed.

    Args:
        head: string. The pooling name, or `"flatten"`.
        head_params: int. Weights of the pooler and the layers after it.
        total_params: int. Weights of the whole model.
        trainable_params: int. Weights the training updated.
        accuracies: list of floats. Test accuracy per seed.
        train_seconds: list of floats. Wall-clock time of each training.
        epochs: int. Epochs per training.
        peak_memory_mib: float. The memory meter's peak over every seed.
        memory_rise_mib: float. That peak less the meter's reading when the
            head started.
        latency_ms: float. Median time to predict one image.
        exports: dict. Paths of the saved models, by format.
    """

    head: str
    head_params: int
    total_params: int
    trainable_params: int
    accuracies: list
    train_seconds: list
    epochs: int
    peak_memory_mib: float
    memory_rise_mib: float
    latency_ms: float
    exports: dict

    @property
    def accuracy_mean(self):
        return statistics.fmean(self.accuracies)

    @property
    def accuracy_std(self):
        """The sample standard deviation over seeds; 0 for one seed."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def train_seconds_mean(self):
        return statistics.fmean(self.train_seconds)

    @property
    def epoch_seconds(self):
        return self.train_seconds_mean / self.epochs

    def row(self):
        """The table row, as strings in `COLUMNS` order."""
        return (
            self.head,
            f"{self.head_params:,}",
            f"{self.total_params:,}",
            f"{self.accuracy_mean:.1%} ± {self.accuracy_std:.1%}",
            f"{self.train_seconds_mean:.1f}",
            f"{self.epoch_seconds:.2f}",
            f"{self.peak_memory_mib:,.0f} (+{self.memory_rise_mib:,.0f})",
            f"{self.latency_ms:.2f}",
        )

    def to_json(self):
        return {
            **dataclasses.asdict(self),
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "train_seconds_mean": self.train_seconds_mean,
            "epoch_seconds": self.epoch_seconds,
        }


# === Summary ===


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


# === Tables ===


def console_table(results, title=None):
    """The comparison as a rich `Table`."""
    table = Table(title=title)
    for index, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if index == 0 else "right")
    for result in results:
        table.add_row(*result.row())
    return table


def markdown_table(results):
    """The comparison as a Markdown table."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| --- |" + " ---: |" * (len(COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(result.row()) + " |" for result in results]
    return "\n".join(lines)


# === Report folder ===


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


def _pictures(report_dir, run, results, heatmaps, images):
    """Draws the charts; returns the report's Markdown lines for them."""
    if not results:
        return []
    try:
        plot(
            results,
            report_dir / "comparison.png",
            f"{run['run']}: {run['settings']['data']}",
        )
        lines = ["![accuracy and training time per head](comparison.png)"]
        if heatmaps:
            heatmap_grid(heatmaps, images, report_dir / "overlays.png")
            lines += [
                "",
                "## Where each head looks",
                "",
                "Attention maps, CAM or Grad-CAM of each head's first-seed model "
                "on the first test images:",
                "",
                "![heatmaps per head](overlays.png)",
            ]
        return lines
    except ImportError as error:
        return [f"Charts skipped: {error}"]


def _markdown(run, results, verdict, pictures):
    settings, machine, measures = run["settings"], run["machine"], run["measurement"]
    lines = [
        f"# keras-globalpool compare: {run['run']}",
        "",
        f"- Status: {run['status']} ({len(results)} of "
        f"{len(settings['heads'])} heads finished)",
        f"- Command: `{run['command']}`",
        f"- Data: {settings['data']}; {settings['train_samples']} training and "
        f"{settings['test_samples']} test images (stratified split), "
        f"{settings['image_shape']}, {settings['num_classes']} classes",
        f"- Backbone: {settings['backbone_description']}",
        f"- Training: {settings['training']}",
        f"- Machine: {machine['description']}",
        "",
        markdown_table(results),
        "",
        *(f"{line}  " for line in verdict["lines"]),
        "",
        "## How each column is measured",
        "",
        *(f"- **{name}**: {text}" for name, text in measures.items()),
        "",
        *pictures,
    ]
    exported = [r for r in results if r.exports]
    if exported:
        lines += ["", "## Exported models", ""]
        lines += [
            f"- {r.head}: `{r.exports['keras']}`, SavedModel "
            f"`{r.exports['saved_model']}`"
            for r in exported
        ]
    return "\n".join(lines) + "\n"


def write_report(report_dir, run, results, heatmaps=None, images=None):
    """Writes `report.json`, `report.md` and the charts.

    The charts, `comparison.png` and `overlays.png`, need matplotlib
    (`pip install "keras-globalpool[viz]"`); without it the report says so.

    Args:
        report_dir: path of the folder, created if missing.
        run: dict describing the run: `run`, `status`, `command`, `machine`
            (with `description`), `settings` and `measurement` (column
            name to how it is measured).
        results: list of `HeadResult`, possibly empty.
        heatmaps: optional dict mapping heads to `(maps, label)` from
            `kgp.viz.overlay_grid.head_heatmaps`, drawn over `images`.
        images: the images `heatmaps` explain.

    Returns:
        The folder, as a `pathlib.Path`.
    """
    report_dir = pathlib.Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    verdict = summary(results) if results else {"lines": ["No head finished."]}
    payload = {**run, "heads": [r.to_json() for r in results], "summary": verdict}
    (report_dir / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
    pictures = _pictures(report_dir, run, results, heatmaps, images)
    (report_dir / "report.md").write_text(_markdown(run, results, verdict, pictures))
    return report_dir
