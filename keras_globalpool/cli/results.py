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
