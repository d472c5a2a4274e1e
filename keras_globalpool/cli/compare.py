"""`compare`: train one backbone once per head and measure every head alike."""

import dataclasses
import pathlib
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf

from keras_globalpool.cli.data.stream import head as head_images
from keras_globalpool.cli.data.stream import sample_shape
from keras_globalpool.cli.export_formats import export_and_measure, export_line
from keras_globalpool.cli.interruption import is_interruption
from keras_globalpool.cli.measure import latency_ms
from keras_globalpool.cli.outputs import (
    check_new_run,
    prepare_run_folders,
)
from keras_globalpool.cli.progress import run_progress
from keras_globalpool.cli.report import write_report
from keras_globalpool.cli.results import HeadResult
from keras_globalpool.cli.run_description import (
    backbone_description,
    machine,
    measurement,
)
from keras_globalpool.cli.runs import RunContext
from keras_globalpool.cli.settings import HEADS
from keras_globalpool.cli.splits import load_splits
from keras_globalpool.cli.workers import InlineRunner, ProcessRunner, default_workers
from keras_globalpool.pooler import split_at_pooler
from keras_globalpool.serving import export_saved_model
from keras_globalpool.viz.overlay_grid import head_heatmaps

# How many test images the report's heatmap grid shows.
OVERLAY_IMAGES = 4


def _export(model, settings, head, export_format=None):
    """Saves `model.keras` and a SavedModel, and runs `export_format`.

    Args:
        export_format: optional function of the head's folder that exports
            it in `settings.export_format` and returns an `ExportResult`.

    Returns:
        `(paths by format, ExportResult or None)`.
    """
    folder = pathlib.Path(settings.saved_models) / settings.run_name / head
    folder.mkdir(parents=True, exist_ok=True)
    keras_path = folder / "model.keras"
    try:
        model.save(keras_path)
        exports = {
            "keras": str(keras_path),
            "saved_model": export_saved_model(model, folder),
        }
        result = None if export_format is None else export_format(folder)
        if result is not None and result.path is not None:
            exports[result.format] = result.path
        return exports, result
    except BaseException:
        # A head is exported whole or not at all, even on Ctrl-C.
        shutil.rmtree(folder, ignore_errors=True)
        raise


class _Comparison:
    """One run of `compare`: its data, trainings and heatmaps."""

    def __init__(self, settings, train, test, command):
        self.settings, self.train, self.test = settings, train, test
        self.command = command
        has_gpu = bool(tf.config.list_physical_devices("GPU"))
        self.context = RunContext(settings, train, test, jit_compile=has_gpu)
        # Cached features are computed here, once: their heads train here too.
        self.workers = (
            1
            if settings.frozen
            else settings.workers or default_workers(settings, has_gpu)
        )
        # Each head's maps on a few test images, for the report's grid; the
        # first also times the latency. A folder that streams decodes these.
        self.overlay_images = head_images(test, OVERLAY_IMAGES)
        self.heatmaps, self.captions = {}, {}

    def runner(self, progress, epochs_task):
        """Where the trainings run: this process, or `self.workers` at once."""
        if self.workers == 1:
            return InlineRunner(self.context, progress, epochs_task)
        runs = [(h, s) for h in self.settings.heads for s in range(self.settings.seeds)]
        return ProcessRunner(self.context, runs, self.workers, progress, epochs_task)

    def run_head(self, head, runner, progress, runs_task):
        seeds = self.settings.seeds
        runs = []
        # Models of earlier heads are exported and no longer needed.
        keras.backend.clear_session(free_memory=True)
        for seed in range(seeds):
            label = f"{head}, seed {seed + 1}/{seeds}"
            progress.update(runs_task, description=f"head {label}")
            runs.append(runner.result(head, seed, label))
            progress.console.print(
                f"{label}: test accuracy {runs[-1].accuracy:.1%}, "
                f"trained in {runs[-1].seconds:.1f} s"
            )
            progress.advance(runs_task)
        first = runs[0].model
        if not self.context.bags:  # Heatmaps explain images, not bags.
            self.heatmaps[head] = head_heatmaps(first, self.overlay_images)
            self.captions[head] = self._captions(first)
        head_model = split_at_pooler(first)[1]
        latency = latency_ms(first, self.overlay_images[0])
        exports, export_result = {}, None
        if self.settings.export:
            exports, export_result = _export(
                first, self.settings, head, self._export_format(first, latency)
            )
        if export_result is not None:
            progress.console.print(export_line(head, export_result))
        return HeadResult(
            head=head,
            head_params=head_model.count_params(),
            total_params=first.count_params(),
            trainable_params=sum(
                int(np.prod(w.shape)) for w in first.trainable_weights
            ),
            accuracies=[run.accuracy for run in runs],
            train_seconds=[run.seconds for run in runs],
            epochs=self.settings.epochs,
            peak_memory_mib=max(run.peak_memory_mib for run in runs),
            memory_rise_mib=max(run.memory_rise_mib for run in runs),
            latency_ms=latency,
            exports=exports,
            export_result=export_result,
        )

    def _export_format(self, model, latency):
        """`_export`'s `export_format` for `model`, or `None` without one."""
        if not self.settings.deploys:
            return None
        keras_measures = (self.context.trainer.predict_test(model), latency)

        def export_format(folder):
            return export_and_measure(
                model, folder, self.settings, self.train, self.test, keras_measures
            )

        return export_format

    def _captions(self, model):
        """Per overlay image, its true class and the one `model` predicts."""
        names = self.test.class_names
        predicted = np.argmax(model.predict(self.overlay_images, verbose=0), axis=-1)
        return [
            f"true {names[t]}, predicted {names[p]}"
            for t, p in zip(self.test.y[:OVERLAY_IMAGES], predicted, strict=True)
        ]

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
                "image_shape": "x".join(map(str, sample_shape(self.train))),
                "num_classes": self.train.num_classes,
                "class_names": list(self.train.class_names),
                "backbone_description": backbone_description(
                    settings, self.context.trainer
                ),
                "training": (
                    f"epochs {settings.epochs}, batch size {settings.batch_size}, "
                    f"Adam at {settings.learning_rate:g}, "
                    f"seeds 0 to {settings.seeds - 1}"
                ),
                "cache_seconds": self.context.trainer.cache_seconds,
                "cache_reused": self.context.trainer.cache_reused,
                "jit_compile": self.context.jit_compile,
                "workers": self.workers,
            },
            "measurement": measurement(
                self.context.meter, self.context.jit_compile, self.workers
            ),
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
        captions=comparison.captions,
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
    with run_progress(console) as progress:
        train, test = load_splits(settings, progress)
        if command is None:
            command = " ".join(["keras-globalpool", *sys.argv[1:]])
        comparison = _Comparison(settings, train, test, command)
        context = comparison.context
        # A cache of another backbone is refused before any folder is written.
        context.trainer.open(lambda: context.model(settings.heads[0], seed=0))
        report_dir = prepare_run_folders(settings, HEADS)["report_dir"]
        results, status = [], "interrupted"
        try:
            context.trainer.prepare(progress)
            runs = progress.add_task("runs", total=len(settings.heads) * settings.seeds)
            epochs = progress.add_task("epochs", total=settings.epochs)
            with comparison.runner(progress, epochs) as runner:
                for head in settings.heads:
                    results.append(comparison.run_head(head, runner, progress, runs))
                    _write(report_dir, comparison, "running", results)
            status = "complete"
        except BaseException as error:
            if not is_interruption(error):
                raise
            console.print("[bold]Interrupted:[/] keeping the heads that finished.")
    _write(report_dir, comparison, status, results)
    return CompareOutcome(results, report_dir, status != "complete")
