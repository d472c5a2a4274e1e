"""What `compare` measured per head, and the comparison table it makes."""

import dataclasses
import statistics

from rich.table import Table

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
EXPORT_COLUMNS = (
    "head",
    "format",
    "quantize",
    "test accuracy",
    "vs Keras (points)",
    "agrees with Keras",
    "size (KB)",
    "latency / image (ms)",
    "Keras latency (ms)",
)


@dataclasses.dataclass
class ExportResult:
    """One head's export to ONNX, LiteRT or OpenVINO, measured in its runtime.

    A head the format cannot express has only `format`, `quantize` and
    `error`; every other field is then `None`.

    Args:
        format: string. The `kgp.export` format.
        quantize: `None`, `"dynamic"` or `"int8"`.
        path: string. The file written (OpenVINO's `.xml`).
        size_bytes: int. Its size on disk, OpenVINO's `.bin` included.
        accuracy: float. Test accuracy of the export, in its runtime.
        keras_accuracy: float. Test accuracy of the float32 Keras model.
        agreement: float. The share of test images where the export and
            Keras predict the same class.
        latency_ms: float. Median time of the export to predict one image.
        keras_latency_ms: float. The same for Keras's `predict_on_batch`.
        error: string. Why the head was not exported, in one line.
    """

    format: str
    quantize: str | None
    path: str | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    keras_accuracy: float | None = None
    agreement: float | None = None
    latency_ms: float | None = None
    keras_latency_ms: float | None = None
    error: str | None = None

    def row(self, head):
        """The Export table's row, as strings in `EXPORT_COLUMNS` order."""
        return (
            head,
            self.format,
            self.quantize or "none",
            f"{self.accuracy:.1%}",
            f"{100 * (self.accuracy - self.keras_accuracy):+.1f}",
            f"{self.agreement:.1%}",
            f"{self.size_bytes / 1000:,.1f}",
            f"{self.latency_ms:.2f}",
            f"{self.keras_latency_ms:.2f}",
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
        export_result: optional `ExportResult`, with `--export-format`.
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
    export_result: ExportResult | None = None

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


def export_markdown(results):
    """The Export table and each head that failed to export, as Markdown lines.

    Args:
        results: list of `HeadResult`.

    Returns:
        list of strings; empty when no head has an `export_result`.
    """
    exports = [(r.head, r.export_result) for r in results if r.export_result]
    measured = [(head, e) for head, e in exports if e.error is None]
    lines = []
    if measured:
        lines += [
            "| " + " | ".join(EXPORT_COLUMNS) + " |",
            "| --- | --- | --- |" + " ---: |" * (len(EXPORT_COLUMNS) - 3),
            *("| " + " | ".join(e.row(head)) + " |" for head, e in measured),
        ]
    failed = [(head, e) for head, e in exports if e.error is not None]
    if failed:
        lines += [""] if lines else []
        lines += [
            f"- {head}: not exported to {e.format}: {e.error}" for head, e in failed
        ]
    return lines
