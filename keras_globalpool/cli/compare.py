"""`compare`: train one backbone once per head and measure every head alike."""

import dataclasses
import pathlib
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_globalpool.cli.backbones import build_model
from keras_globalpool.cli.interruption import is_interruption
from keras_globalpool.cli.measure import latency_ms, memory_meter
from keras_globalpool.cli.outputs import (
    check_new_run,
    prepare_run_folders,
)
from keras_globalpool.cli.progress import EpochProgress, run_progress
from keras_globalpool.cli.report import write_report
from keras_globalpool.cli.results import HeadResult
from keras_globalpool.cli.run_description import (
    backbone_description,
    machine,
    measurement,
)
from keras_globalpool.cli.settings import HEADS
from keras_globalpool.cli.splits import load_splits
from keras_globalpool.cli.training import TRAINERS
from keras_globalpool.export import export_saved_model
from keras_globalpool.pooler import split_at_pooler
from keras_globalpool.viz.overlay_grid import head_heatmaps

# How many test images the report's heatmap grid shows.
OVERLAY_IMAGES = 4

# === Training ===


def _compile(model, learning_rate, jit_compile):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def _export(model, settings, head):
    folder = pathlib.Path(settings.saved_models) / settings.run_name / head
    folder.mkdir(parents=True, exist_ok=True)
    keras_path = folder / "model.keras"
    try:
        model.save(keras_path)
        return {
            "keras": str(keras_path),
            "saved_model": export_saved_model(model, folder),
        }
    except BaseException:
        # A head is exported whole or not at all, even on Ctrl-C.
        shutil.rmtree(folder, ignore_errors=True)
        raise


class _Comparison:
    """One run of `compare`: its data, trainer, meter and progress display."""

    def __init__(self, settings, train, test, command):
        self.settings, self.train, self.test = settings, train, test
        self.command = command
        self.trainer = TRAINERS[settings.frozen](
            train, test, settings.epochs, settings.batch_size
        )
        self.meter = memory_meter()
        self.jit_compile = bool(tf.config.list_physical_devices("GPU"))
        # Each head's maps on a few test images, for the report's grid.
        self.overlay_images = test.x[:OVERLAY_IMAGES]
        self.heatmaps = {}

    def model(self, head, seed):
        keras.utils.set_random_seed(seed)
        model = build_model(
            self.settings.backbone,
            head,
            self.train.image_shape,
            self.train.num_classes,
            self.settings.weights,
        )
        return _compile(model, self.settings.learning_rate, self.jit_compile)

    def run_head(self, head, progress, runs_task, epochs_task):
        seeds = self.settings.seeds
        accuracies, seconds, first = [], [], None
        # Models of earlier heads are exported and no longer needed.
        keras.backend.clear_session(free_memory=True)
        start_memory = self.meter.reset()
        for seed in range(seeds):
            label = f"{head}, seed {seed + 1}/{seeds}"
            progress.update(runs_task, description=f"head {label}")
            model = self.model(head, seed)
            start = time.perf_counter()
            self.trainer.fit(model, [EpochProgress(progress, epochs_task, label)])
            seconds.append(time.perf_counter() - start)
            accuracies.append(self.trainer.accuracy(model))
            progress.console.print(
                f"{label}: test accuracy {accuracies[-1]:.1%}, "
                f"trained in {seconds[-1]:.1f} s"
            )
            progress.advance(runs_task)
            if first is None:
                first = model
        peak = self.meter.peak()
        self.heatmaps[head] = head_heatmaps(first, self.overlay_images)
        head_model = split_at_pooler(first)[1]
        return HeadResult(
            head=head,
            head_params=head_model.count_params(),
            total_params=first.count_params(),
            trainable_params=sum(
                int(np.prod(w.shape)) for w in first.trainable_weights
            ),
            accuracies=accuracies,
            train_seconds=seconds,
            epochs=self.settings.epochs,
            peak_memory_mib=peak,
            memory_rise_mib=max(peak - start_memory, 0.0),
            latency_ms=latency_ms(first, self.test.x[0]),
            exports=_export(first, self.settings, head) if self.settings.export else {},
        )

    def description(self, status, results):
        settings = self.settings
        return {
            "run": settings.run_name,
            "status": status,
            "command": self.command,
            "machine": machine(),
            "settings": {
                **dataclasses.asdict(settings),
                "heads": list(settings.heads),
                "data": self.train.description,
                "train_samples": len(self.train.y),
                "test_samples": len(self.test.y),
                "image_shape": "x".join(map(str, self.train.image_shape)),
                "num_classes": self.train.num_classes,
                "class_names": list(self.train.class_names),
                "backbone_description": backbone_description(settings, self.trainer),
                "training": (
                    f"epochs {settings.epochs}, batch size {settings.batch_size}, "
                    f"Adam at {settings.learning_rate:g}, "
                    f"seeds 0 to {settings.seeds - 1}"
                ),
                "cache_seconds": self.trainer.cache_seconds,
                "jit_compile": self.jit_compile,
            },
            "measurement": measurement(self.meter, self.jit_compile),
        }


@dataclasses.dataclass
class CompareOutcome:
    """What `run_compare` returns: the finished heads and where they went."""

    results: list
    report_dir: pathlib.Path
    interrupted: bool


def _write(report_dir, comparison, status, results):
    write_report(
        report_dir,
        comparison.description(status, results),
        results,
        heatmaps=comparison.heatmaps,
        images=comparison.overlay_images,
    )


def run_compare(settings, console, command=None):
    """Trains and measures every head, writing the report after each one.

    The run's folders are checked before the data load (an earlier run of
    the same name is refused unless `settings.overwrite`) and created and
    test-written before any training. A `KeyboardInterrupt` (Ctrl-C), even
    one TensorFlow wrapped in another error, stops the run; the heads
    finished so far stay in the report, marked interrupted.

    Args:
        settings: `CompareSettings`.
        console: rich `Console` for the progress display.
        command: optional string. The command line, for the report.
            Defaults to this process's arguments.

    Returns:
        `CompareOutcome`.
    """
    check_new_run(settings, HEADS)
    train, test = load_splits(settings)
    report_dir = prepare_run_folders(settings, HEADS)["report_dir"]
    if command is None:
        command = " ".join(["keras-globalpool", *sys.argv[1:]])
    comparison = _Comparison(settings, train, test, command)
    results, status = [], "interrupted"
    try:
        comparison.trainer.prepare(lambda: comparison.model(settings.heads[0], seed=0))
        with run_progress(console) as progress:
            runs = progress.add_task("runs", total=len(settings.heads) * settings.seeds)
            epochs = progress.add_task("epochs", total=settings.epochs)
            for head in settings.heads:
                results.append(comparison.run_head(head, progress, runs, epochs))
                _write(report_dir, comparison, "running", results)
        status = "complete"
    except BaseException as error:
        if not is_interruption(error):
            raise
        console.print("[bold]Interrupted:[/] keeping the heads that finished.")
    _write(report_dir, comparison, status, results)
    return CompareOutcome(results, report_dir, status != "complete")
