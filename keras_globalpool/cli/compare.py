"""`compare`: train one backbone once per head and measure every head alike."""

import dataclasses
import math
import numbers
import os
import pathlib
import platform
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_globalpool import data as kgp_data
from keras_globalpool.cached import split_at_pooler
from keras_globalpool.cli.backbones import SMALL_CNN, build_model, check_backbone
from keras_globalpool.cli.interruption import is_interruption
from keras_globalpool.cli.measure import latency_ms, memory_meter
from keras_globalpool.cli.outputs import (
    check_new_run,
    check_run_name,
    prepare_run_folders,
)
from keras_globalpool.cli.progress import EpochProgress, run_progress
from keras_globalpool.cli.report import HeadResult, write_report
from keras_globalpool.cli.training import TRAINERS
from keras_globalpool.data.dataset import MIN_PER_CLASS
from keras_globalpool.export import export_saved_model
from keras_globalpool.registry import POOLINGS
from keras_globalpool.viz.overlay_grid import head_heatmaps

# The classic Flatten + Dense baseline first, then every pooling.
HEADS = ("flatten", *POOLINGS)
# How many test images the report's heatmap grid shows.
OVERLAY_IMAGES = 4


def check_learning_rate(learning_rate):
    """Raises a Keras-style `ValueError` unless `learning_rate` is finite and > 0.

    Args:
        learning_rate: a real number.

    Returns:
        `learning_rate`, unchanged.

    Example:

    >>> from keras_globalpool.cli.compare import check_learning_rate
    >>> check_learning_rate(3e-4)
    0.0003
    """
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, numbers.Real)
        or not (math.isfinite(learning_rate) and learning_rate > 0)
    ):
        raise ValueError(
            "`learning_rate` must be a finite number > 0. "
            f"Received: learning_rate={learning_rate!r}"
        )
    return learning_rate


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """Everything `compare` needs, with the defaults of the command line.

    Args:
        data: string. A `kgp.data.load` source: `"translated-digits"`,
            `"digits"`, a folder of class subfolders or a `.npz` file.
        image_size: optional int. Resize the images to this square size.
        backbone: string. `"small-cnn"` or a `keras.applications` name.
        weights: `None`, `"imagenet"` or a weights file, for applications.
            With weights, the backbone is frozen and the heads train on
            cached features.
        heads: tuple of head names, from `HEADS`.
        epochs: int. Epochs per training.
        seeds: int. Trainings per head, with seeds 0, 1, ...
        batch_size: int.
        learning_rate: float > 0. Adam's learning rate.
        test_fraction: float. The share of images held out for testing.
        max_samples: optional int. Keep at most this many images (stratified).
        run_name: string. Names the report and export folders: one folder
            name of letters, digits, `.`, `_` and `-`.
        report_dir: string. The report goes to `report_dir/run_name/`.
        saved_models: string. Models go to `saved_models/run_name/<head>/`.
        export: bool. Save and export each head's first-seed model.
        overwrite: bool. Replace the folders of an earlier run of the same
            name; without it, such a run is refused.
    """

    data: str = "translated-digits"
    image_size: int | None = None
    backbone: str = SMALL_CNN
    weights: str | None = None
    heads: tuple = HEADS
    epochs: int = 12
    seeds: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    test_fraction: float = 0.2
    max_samples: int | None = None
    run_name: str = dataclasses.field(
        default_factory=lambda: time.strftime("compare-%Y%m%d-%H%M%S")
    )
    report_dir: str = "reports"
    saved_models: str = "saved_models"
    export: bool = True
    overwrite: bool = False

    def __post_init__(self):
        unknown = [head for head in self.heads if head not in HEADS]
        if unknown or not self.heads:
            names = ", ".join(repr(head) for head in HEADS)
            raise ValueError(
                f"`heads` must be one or more of {{{names}}}. "
                f"Received: heads={list(self.heads)!r}"
            )
        if len(set(self.heads)) != len(self.heads):
            raise ValueError(
                f"`heads` must not repeat a head. Received: heads={list(self.heads)!r}"
            )
        for name in ("epochs", "seeds", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
                )
        check_learning_rate(self.learning_rate)
        check_run_name(self.run_name)
        check_backbone(self.backbone, self.weights)

    @property
    def frozen(self):
        """Whether the backbone is pretrained and frozen."""
        return self.weights is not None


def load_splits(settings):
    """Loads, checks, fits to the backbone and splits the data.

    Returns:
        `(train, test)` `ImageDataset`s.
    """
    dataset = kgp_data.load(settings.data, image_size=settings.image_size)
    if settings.max_samples is not None:
        least = MIN_PER_CLASS * dataset.num_classes
        if settings.max_samples < least:
            raise ValueError(
                f"`max_samples` must keep {MIN_PER_CLASS} images per class, "
                f"{least} for {dataset.num_classes} classes. "
                f"Received: max_samples={settings.max_samples}"
            )
        dataset = kgp_data.stratified_subset(dataset, settings.max_samples)
    kgp_data.check_enough_samples(dataset)
    if settings.image_size is not None:
        dataset = kgp_data.resize(dataset, settings.image_size)
    if settings.backbone != SMALL_CNN:
        dataset = kgp_data.to_rgb(dataset)
    return kgp_data.stratified_split(dataset, settings.test_fraction)


# === Run description ===


def _machine():
    gpus = tf.config.list_physical_devices("GPU")
    device = (
        ", ".join(
            tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in gpus
        )
        if gpus
        else "CPU only"
    )
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device,
        **versions,
        "description": (
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{device}; TensorFlow {versions['tensorflow']}, "
            f"Keras {versions['keras']}, Python {versions['python']}"
        ),
    }


def _backbone_description(settings, trainer):
    if settings.backbone == SMALL_CNN:
        return (
            f"{SMALL_CNN}, trained from scratch with each head ({trainer.description})"
        )
    if not settings.frozen:
        return (
            f"{settings.backbone}, random weights, trained from scratch with each "
            f"head ({trainer.description})"
        )
    cached = (
        ""
        if trainer.cache_seconds is None
        else f"; caching the features took {trainer.cache_seconds:.1f} s, once"
    )
    return (
        f"{settings.backbone}, weights {settings.weights!r}, frozen ("
        f"{trainer.description}{cached})"
    )


def _measurement(meter, jit_compile):
    return {
        "head params": "weights of the pooler and every layer after it",
        "total params": "weights of the whole model, backbone included",
        "test accuracy": "mean ± sample standard deviation over the seeds, on "
        "the held-out test images",
        "train time (s)": "wall-clock time of one training (all epochs, graph "
        f"tracing included), mean over the seeds; jit_compile={jit_compile}",
        "time / epoch (s)": "train time divided by the epochs",
        "peak memory (MiB)": meter.description,
        "latency / image (ms)": "median over 30 calls of `predict_on_batch` on one "
        "image of the first seed's model, after 3 warm-up calls",
    }


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
            "machine": _machine(),
            "settings": {
                **dataclasses.asdict(settings),
                "heads": list(settings.heads),
                "data": self.train.description,
                "train_samples": len(self.train.y),
                "test_samples": len(self.test.y),
                "image_shape": "x".join(map(str, self.train.image_shape)),
                "num_classes": self.train.num_classes,
                "class_names": list(self.train.class_names),
                "backbone_description": _backbone_description(settings, self.trainer),
                "training": (
                    f"epochs {settings.epochs}, batch size {settings.batch_size}, "
                    f"Adam at {settings.learning_rate:g}, "
                    f"seeds 0 to {settings.seeds - 1}"
                ),
                "cache_seconds": self.trainer.cache_seconds,
                "jit_compile": self.jit_compile,
            },
            "measurement": _measurement(self.meter, self.jit_compile),
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
