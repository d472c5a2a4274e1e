"""Progress display: rich bars for the runs and for the epochs of each run."""

import keras
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def run_progress(console):
    """A rich `Progress` with room for the runs task and the epochs task."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class EpochProgress(keras.callbacks.Callback):
    """Advances a rich task batch by batch and shows each epoch's metrics.

    Args:
        progress: rich `Progress`.
        task: the id of the task to drive.
        label: string. Names the run, such as `"avg, seed 1/3"`.
    """

    def __init__(self, progress, task, label):
        super().__init__()
        self.progress, self.task, self.label = progress, task, label

    def on_train_begin(self, logs=None):
        self._epochs = self.params["epochs"]
        self.progress.reset(
            self.task,
            total=self._epochs * (self.params["steps"] or 1),
            description=f"  {self.label}: epoch 1/{self._epochs}",
        )

    def on_train_batch_end(self, batch, logs=None):
        self.progress.advance(self.task)

    def on_epoch_end(self, epoch, logs=None):
        metrics = " ".join(
            f"{name} {value:.3f}" for name, value in (logs or {}).items()
        )
        following = min(epoch + 2, self._epochs)
        self.progress.update(
            self.task,
            description=f"  {self.label}: epoch {following}/{self._epochs}  {metrics}",
        )
