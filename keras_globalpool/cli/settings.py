"""The settings of `compare`, with the command line's defaults, checked."""

import dataclasses
import math
import numbers
import time

from keras_globalpool.arguments import check_positive_int
from keras_globalpool.cached import budget
from keras_globalpool.cli.backbones import SMALL_CNN, check_backbone
from keras_globalpool.cli.data.tasks import TASKS
from keras_globalpool.cli.outputs import check_run_name
from keras_globalpool.deployment.formats import FORMATS, QUANTIZATIONS
from keras_globalpool.registry import POOLINGS

# Every head `compare` can train: the classic Flatten + Dense baseline first,
# then every pooling.
HEADS = ("flatten", *POOLINGS)
# The heads it trains by default: the baseline and the first five poolings.
DEFAULT_HEADS = ("flatten", "avg", "max", "mixed", "attention", "gem")


def check_learning_rate(learning_rate):
    """Raises a Keras-style `ValueError` unless `learning_rate` is finite and > 0.

    Args:
        learning_rate: a real number.

    Returns:
        `learning_rate`, unchanged.

    Example:

    >>> from keras_globalpool.cli.settings import check_learning_rate
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
        data: string. A `keras_globalpool.cli.data.load` source: `"translated-digits"`,
            `"digits"`, a folder of class subfolders or a `.npz` file.
        image_size: optional int. Resize the images to this square size.
        backbone: string. `"small-cnn"` or a `keras.applications` name.
        weights: `None`, `"imagenet"` or a weights file, for applications.
            With weights, the backbone is frozen and the heads train on
            cached features.
        heads: tuple of head names, from `HEADS`. Defaults to
            `DEFAULT_HEADS`.
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
        task: optional string, a name in `TASKS`. Train on that task's data
            instead of `data`, which must stay at its default.
        workers: optional int. Trainings run at once, each in a process of
            its own, when the whole model trains (a frozen backbone's heads
            train one at a time on its cached features). Defaults to one per
            CPU core on a CPU, and to 1 with a GPU.
        export_format: optional string, a format of `kgp.export`. Also
            export each head's first-seed model to `"onnx"`, `"litert"` or
            `"openvino"` and measure it in its runtime; `"tf_saved_model"`
            adds nothing, as every run exports a SavedModel.
        quantize: optional string, `"dynamic"` or `"int8"`, for an
            `export_format` that offers it (`"onnx"`, `"litert"`); `"int8"`
            calibrates on up to 256 training images.
        cache_dir: optional string. With a frozen backbone, keep the cached
            features in this folder, one cache per split, and reuse them in
            a later run on the same images, split and backbone weights; a
            cache of other weights is refused unless `overwrite_cache`.
        overwrite_cache: bool. Replace a cache in `cache_dir` that another
            backbone made.
        memory_budget: optional string such as `"2GB"`, or int (bytes). The
            most memory the cached features may take; above it they go to
            disk as the backbone runs. Defaults to `None`: a quarter of the
            available memory.
    """

    data: str = "translated-digits"
    image_size: int | None = None
    backbone: str = SMALL_CNN
    weights: str | None = None
    heads: tuple = DEFAULT_HEADS
    epochs: int = 10
    seeds: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    test_fraction: float = 0.2
    max_samples: int | None = None
    run_name: str = dataclasses.field(
        default_factory=lambda: time.strftime("compare-%Y%m%d-%H%M%S")
    )
    report_dir: str = "reports"
    saved_models: str = "saved_models"
    export: bool = True
    overwrite: bool = False
    task: str | None = None
    workers: int | None = None
    export_format: str | None = None
    quantize: str | None = None
    cache_dir: str | None = None
    overwrite_cache: bool = False
    memory_budget: str | int | None = None

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
            check_positive_int(name, getattr(self, name))
        if self.workers is not None:
            check_positive_int("workers", self.workers)
        check_learning_rate(self.learning_rate)
        check_run_name(self.run_name)
        check_backbone(self.backbone, self.weights)
        self._check_task()
        self._check_export_format()
        self._check_cache()

    def _check_cache(self):
        if self.memory_budget is not None:
            budget.parse(self.memory_budget)
        if self.overwrite_cache and self.cache_dir is None:
            raise ValueError(
                "`overwrite_cache` (--overwrite-cache) needs `cache_dir` "
                "(--cache-dir), the folder whose cache it replaces. Received: "
                f"overwrite_cache={self.overwrite_cache!r}, cache_dir=None"
            )
        if self.cache_dir is not None and not self.frozen:
            raise ValueError(
                "`cache_dir` (--cache-dir) keeps the features of a frozen "
                "backbone, a keras.applications backbone with weights; here the "
                "whole model trains and nothing is cached. Received: "
                f"cache_dir={self.cache_dir!r}, backbone={self.backbone!r}, "
                f"weights={self.weights!r}"
            )

    def _check_task(self):
        if self.task is None:
            return
        if self.task not in TASKS:
            names = ", ".join(repr(name) for name in TASKS)
            raise ValueError(
                f"`task` must be one of {{{names}}}. Received: task={self.task!r}"
            )
        if self.data != CompareSettings.data:
            raise ValueError(
                "`task` brings its own data: leave `data` at its default. "
                f"Received: task={self.task!r}, data={self.data!r}"
            )
        if self.task == "bag" and (self.backbone, self.image_size) != (SMALL_CNN, None):
            raise ValueError(
                "The bag task trains its own instance encoder on 8x8 digits: "
                f"`backbone` must be {SMALL_CNN!r} and `image_size` None. Received: "
                f"backbone={self.backbone!r}, image_size={self.image_size!r}"
            )

    def _check_export_format(self):
        if self.export_format is not None:
            if self.export_format not in FORMATS:
                names = ", ".join(repr(name) for name in FORMATS)
                raise ValueError(
                    f"`export_format` must be one of {{{names}}}. "
                    f"Received: export_format={self.export_format!r}"
                )
            if not self.export:
                raise ValueError(
                    "`export_format` needs the export that `export=False` "
                    "(--no-export) skips. "
                    f"Received: export_format={self.export_format!r}"
                )
        if self.quantize not in (None, "dynamic", "int8"):
            raise ValueError(
                "`quantize` must be None, 'dynamic' or 'int8'. "
                f"Received: quantize={self.quantize!r}"
            )
        offered = QUANTIZATIONS.get(self.export_format, ())
        if self.quantize is not None and self.quantize not in offered:
            formats = " or ".join(repr(name) for name in QUANTIZATIONS)
            raise ValueError(
                "`quantize` (--quantize) needs an `export_format` "
                f"(--export-format) that offers it: {formats}. Received: "
                f"quantize={self.quantize!r}, export_format={self.export_format!r}"
            )

    @property
    def deploys(self):
        """Whether heads are also exported to a format besides SavedModel."""
        return self.export_format not in (None, "tf_saved_model")

    @property
    def frozen(self):
        """Whether the backbone is pretrained and frozen."""
        return self.weights is not None
