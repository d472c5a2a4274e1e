"""The `keras-globalpool` command line: `compare`, `export` and `explain`."""

import argparse
import sys

import tensorflow as tf
from rich.console import Console

from keras_globalpool.cached import budget
from keras_globalpool.cli.backbones import SMALL_CNN
from keras_globalpool.cli.compare import run_compare
from keras_globalpool.cli.data.sources import DATASETS
from keras_globalpool.cli.data.tasks import TASKS
from keras_globalpool.cli.explain_command import add_explain_parser
from keras_globalpool.cli.export_command import FORMAT_NAMES, export_keras_file
from keras_globalpool.cli.export_formats import export_size
from keras_globalpool.cli.interruption import is_interruption
from keras_globalpool.cli.results import console_table
from keras_globalpool.cli.settings import (
    DEFAULT_HEADS,
    HEADS,
    CompareSettings,
    check_learning_rate,
)
from keras_globalpool.cli.suite import SUITE, claims_table, run_suite
from keras_globalpool.cli.verdict import summary
from keras_globalpool.deployment.formats import FORMATS

# The quantizations of `kgp.export`, for ONNX and LiteRT.
QUANTIZE = ("dynamic", "int8")

# `--quick`: a smoke test of the whole pipeline in well under a minute.
QUICK = {"epochs": 2, "seeds": 1, "max_samples": 500}
# Exit codes: bad arguments as argparse uses, Ctrl-C as shells report it.
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _learning_rate(text):
    try:
        return check_learning_rate(float(text))
    except ValueError as error:  # Not a number, or not a usable rate.
        message = f"must be a finite number > 0, got {text}"
        raise argparse.ArgumentTypeError(message) from error


def _heads(text):
    heads = [head for head in text.split(",") if head]
    if not heads:
        raise argparse.ArgumentTypeError(f"must name at least one head, got {text!r}")
    return list(HEADS) if heads == ["all"] else heads


def _memory_budget(text):
    try:
        budget.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument in one line, as every other bad input is."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _add_compare(commands):
    parser = commands.add_parser(
        "compare",
        help="train one backbone once per head and compare the heads",
        description=(
            "Train the same backbone once per pooling head, measure accuracy "
            "(mean ± std over seeds), parameters, training time, peak memory "
            "and latency, write a report folder and export every model."
        ),
    )
    parser.add_argument(
        "--data",
        default="translated-digits",
        help="a folder of class subfolders, decoded a batch at a time (hidden "
        "files and folders, whose names start with '.', are skipped), a .npz file "
        "with arrays x and y, or "
        f"a built-in data set: {', '.join(DATASETS)} (default: translated-digits); "
        "an existing path wins over a built-in name",
    )
    parser.add_argument(
        "--task",
        choices=[*TASKS, SUITE],
        help="train on a built-in task that tests one claim of the design notes "
        f"({', '.join(TASKS)}), or on every one of them: {SUITE}, which ends with "
        "a table of the claims as measured; each task brings its data and heads",
    )
    parser.add_argument(
        "--image-size", type=_positive_int, help="resize images to this square size"
    )
    parser.add_argument(
        "--backbone",
        default=SMALL_CNN,
        help=f"{SMALL_CNN} (default, trained from scratch) or a keras.applications "
        "name such as ResNet50 or MobileNetV2",
    )
    parser.add_argument(
        "--weights",
        help="for a keras.applications backbone: imagenet (default), none, or a "
        "weights file; with weights the backbone is frozen and the heads train "
        "on cached features",
    )
    parser.add_argument(
        "--heads",
        type=_heads,
        action="extend",
        help=(
            f"comma-separated heads among {','.join(HEADS)}, or all "
            f"(default: {','.join(DEFAULT_HEADS)})"
        ),
    )
    parser.add_argument(
        "--epochs", type=_positive_int, help=f"default {CompareSettings.epochs}"
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        help=f"trainings per head, for mean ± std (default {CompareSettings.seeds})",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=CompareSettings.batch_size
    )
    parser.add_argument(
        "--learning-rate",
        type=_learning_rate,
        default=CompareSettings.learning_rate,
        help=f"Adam's learning rate (default {CompareSettings.learning_rate:g})",
    )
    parser.add_argument(
        "--max-samples", type=_positive_int, help="keep at most this many images"
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        help="trainings run at once, each in a process of its own, when the whole "
        "model trains (default: one per CPU core on a CPU, 1 with a GPU; a frozen "
        "backbone's heads train one at a time)",
    )
    parser.add_argument(
        "--cache-dir",
        help="with a frozen backbone (--weights): keep the cached features in "
        "this folder and reuse them when a later run has the same images, split "
        "and backbone weights; a cache of another backbone is refused unless "
        "--overwrite-cache",
    )
    parser.add_argument(
        "--overwrite-cache",
        action="store_true",
        help="replace a cache in --cache-dir that another backbone made",
    )
    parser.add_argument(
        "--memory-budget",
        type=_memory_budget,
        help="the most memory the cached features may take, such as 2GB or "
        "512MiB; above it they go to disk as the backbone runs (default: a "
        "quarter of the available memory)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: {epochs} epochs, {seeds} seed, at most {max_samples} "
        "images, unless given explicitly".format(**QUICK),
    )
    parser.add_argument(
        "--run-name",
        help="names the folders: letters, digits, '.', '_' and '-' (default: a "
        "timestamp); an earlier run's name is refused unless --overwrite",
    )
    parser.add_argument(
        "--report-dir", default="reports", help="reports go to REPORT_DIR/RUN_NAME"
    )
    parser.add_argument(
        "--saved-models",
        default="saved_models",
        help="models go to SAVED_MODELS/RUN_NAME/HEAD/ (default: saved_models)",
    )
    parser.add_argument(
        "--no-export", action="store_true", help="skip saving and exporting models"
    )
    parser.add_argument(
        "--export-format",
        choices=list(FORMATS),
        help="also export each head's first-seed model to SAVED_MODELS/RUN_NAME/"
        "HEAD/model.onnx, .tflite or .xml with kgp.export, and measure it in its "
        "runtime on the test images (accuracy, agreement with Keras, size, "
        "latency) for the report's Export table; tf_saved_model adds nothing",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE,
        help="with --export-format onnx or litert: int8 weights (dynamic), or "
        "int8 weights and activations calibrated on up to 256 training images "
        "(int8)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run of the same --run-name: its report folder "
        "and, when exporting, its models folder are deleted before training",
    )
    parser.set_defaults(handler=_compare)


def _add_export(commands):
    parser = commands.add_parser(
        "export",
        help="convert a .keras model for TF Serving, ONNX, LiteRT or OpenVINO",
        description=(
            "Write MODEL (a .keras file) to OUT with kgp.export, which checks the "
            "export in its runtime first: a SavedModel in OUT/<version>/ for TF "
            "Serving (the default), or the file OUT (.onnx, .tflite or .xml)."
        ),
    )
    parser.add_argument("model", help="the .keras file")
    parser.add_argument(
        "out",
        help="for tf_saved_model, the model's base folder for TF Serving; else "
        "the file to write, ending in .onnx, .tflite or .xml (OpenVINO writes "
        "a .bin beside it)",
    )
    parser.add_argument(
        "--format",
        choices=list(FORMATS),
        default="tf_saved_model",
        help="default tf_saved_model",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE,
        help="for onnx and litert: int8 weights (dynamic), or int8 weights and "
        "activations calibrated on --calibration (int8)",
    )
    parser.add_argument(
        "--calibration",
        help="with --quantize int8 only: a folder of class subfolders of images "
        "(resized to the model's input size) or a .npz file with arrays x and y; "
        "100 to 500 typical images, raw pixels (0-255)",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "model"),
        help="for the file formats: float32 (default; a mixed-precision model "
        "is exported in float32) or model (its own dtype policy, for onnx and "
        "openvino)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT file"
    )
    parser.add_argument(
        "--version",
        type=int,
        help="tf_saved_model only: version folder (default: the next free number)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="tf_saved_model only: for a sigmoid head, the probability at or "
        "above which class_ids or labels is 1 (default 0.5; a number in (0, 1))",
    )
    parser.set_defaults(handler=_export)


def build_parser():
    """The argument parser of `keras-globalpool`."""
    parser = _Parser(
        prog="keras-globalpool",
        description=(
            "Compare global-pooling heads on your images, export models for TF "
            "Serving, ONNX, LiteRT or OpenVINO, and explain their predictions "
            "with heatmaps."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_compare(commands)
    _add_export(commands)
    add_explain_parser(commands).set_defaults(handler=_explain)
    return parser


def settings_from(args):
    """`CompareSettings` from parsed `compare` arguments, `--quick` applied."""
    quick = QUICK if args.quick else {}
    weights = args.weights
    if weights is None:
        weights = None if args.backbone == SMALL_CNN else "imagenet"
    elif weights.lower() == "none":
        weights = None
    optional = {} if args.run_name is None else {"run_name": args.run_name}
    task = None if args.task in (None, SUITE) else args.task
    default_heads = TASKS[task].heads if task else DEFAULT_HEADS
    return CompareSettings(
        data=args.data,
        image_size=args.image_size,
        backbone=args.backbone,
        weights=weights,
        heads=tuple(args.heads or default_heads),
        task=task,
        epochs=args.epochs or quick.get("epochs", CompareSettings.epochs),
        seeds=args.seeds or quick.get("seeds", CompareSettings.seeds),
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_samples=args.max_samples or quick.get("max_samples"),
        report_dir=args.report_dir,
        saved_models=args.saved_models,
        export=not args.no_export,
        overwrite=args.overwrite,
        workers=args.workers,
        export_format=args.export_format,
        quantize=args.quantize,
        cache_dir=args.cache_dir,
        overwrite_cache=args.overwrite_cache,
        memory_budget=args.memory_budget,
        **optional,
    )


def _suite(args, settings, console, command):
    outcome = run_suite(settings, console, command, heads=args.heads)
    console.print(claims_table(outcome.claims))
    console.print(f"Report: {outcome.report_dir}/report.md")
    return EXIT_INTERRUPTED if outcome.interrupted else 0


def _compare(args, console, argv):
    settings = settings_from(args)
    # Every head builds new models, whose first predictions TF reports as
    # retracing; that is expected here.
    tf.get_logger().setLevel("ERROR")
    command = " ".join(["keras-globalpool", *argv])
    if args.task == SUITE:
        return _suite(args, settings, console, command)
    outcome = run_compare(settings, console, command=command)
    if outcome.results:
        console.print(
            console_table(outcome.results, title=f"compare: {settings.run_name}")
        )
        for line in summary(outcome.results)["lines"]:
            console.print(line)
    console.print(f"Report: {outcome.report_dir}/report.md")
    if settings.export and outcome.results:
        console.print(f"Models: {settings.saved_models}/{settings.run_name}/<head>/")
    return EXIT_INTERRUPTED if outcome.interrupted else 0


def _export(args, console, argv):
    path = export_keras_file(
        args.model,
        args.out,
        version=args.version,
        threshold=args.threshold,
        format=args.format,
        precision=args.precision,
        quantize=args.quantize,
        calibration=args.calibration,
        overwrite=args.overwrite,
    )
    line = f"{FORMAT_NAMES[args.format]}: {path}"
    if args.format != "tf_saved_model":
        line += f" ({export_size(path) / 1000:,.1f} KB)"
    console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def _explain(args, console, argv):
    return args.func(args)


def main(argv=None):
    """Runs `keras-globalpool` with `argv` (default: the process's arguments).

    Every bad input, from a bad option to an unreadable image, prints one
    line, `keras-globalpool <command>: error: ...`, to stderr.

    Returns:
        The exit code: 0 on success, 2 for bad input, 130 when interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a bad argument already reported.
        return stop.code
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        return args.handler(args, console, argv)
    except BaseException as error:
        # Before any head finished, or outside `compare`: nothing to keep.
        if is_interruption(error):
            print(f"keras-globalpool {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if not isinstance(error, (ValueError, OSError, ImportError)):
            raise
        message = " ".join(str(error).split())
        print(f"keras-globalpool {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
