"""Runs the benchmark suite, prints its tables and writes them as JSON.

    python -m benchmarks.run                 # every section
    python -m benchmarks.run --quick         # fewer repeats and epochs
    python -m benchmarks.run --sections 1,2  # some sections only
    python -m benchmarks.run --sections 1 --dtypes float32  # section 1 in float32
    python -m benchmarks.run --device gpu    # the same on the first GPU
    python -m benchmarks.run --backend all   # section 6 on jax and torch too
    python -m benchmarks.streaming_cache --sizes 5000,10000,20000  # section 7's options

Sections: 1 layers against the Keras built-ins, 2 bandwidth, 3 head overhead
on ResNet50 and MobileNetV2, 4 cached-feature training, 5 peak training
memory (all five on TensorFlow), 6 forward and training step against the
Keras built-ins (on every backend), 7 cached training from an image folder
streamed to a disk cache (TensorFlow; its sizes are options of
`python -m benchmarks.streaming_cache`). Every figure is a ratio of medians
measured in this run, or, in sections 5 and 7, a peak read from the kernel.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SECTIONS = {
    "1": "benchmarks.layers_vs_keras",
    "2": "benchmarks.bandwidth",
    "3": "benchmarks.head_overhead",
    "4": "benchmarks.cached_training",
    "5": "benchmarks.memory",
    "6": "benchmarks.passes",
    "7": "benchmarks.streaming_cache",
}
# The sections written for TensorFlow's graph mode, XLA and devices.
TF_ONLY = ("1", "2", "3", "4", "5", "7")
BACKENDS = ("tensorflow", "jax", "torch")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sections",
        default=None,
        help="comma-separated section numbers (default: all that run on the "
        "backend: 1-7 on tensorflow, 6 on jax and torch)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="the Keras backend, several comma-separated, or all; each runs in "
        "a process of its own (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats and epochs, for a smoke run"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved rounds per comparison (default: 15, or 5 with --quick)",
    )
    parser.add_argument(
        "--dtypes",
        default="float32,bfloat16,float16",
        help="section 1's input dtypes, comma-separated (default: all three)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where to run; gpu needs a GPU TensorFlow can see (default: cpu)",
    )
    parser.add_argument(
        "--out",
        default="benchmarks/results.json",
        help="the JSON file to write (default: benchmarks/results.json)",
    )
    args = parser.parse_args(argv)
    backends = BACKENDS if args.backend == "all" else args.backend.split(",")
    args.backends = [b.strip() for b in backends if b.strip()]
    if not args.backends or any(b not in BACKENDS for b in args.backends):
        parser.error(
            f"--backend takes some of {list(BACKENDS)}, or all; got {args.backend!r}"
        )
    del args.backend
    tf_only = args.backends == ["tensorflow"]
    if args.sections is None:
        args.sections = ",".join(SECTIONS if tf_only else ["6"])
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    if not tf_only and set(args.sections) & set(TF_ONLY):
        parser.error(
            f"sections {list(TF_ONLY)} run on tensorflow only; with --backend "
            f"{','.join(args.backends)} choose section 6"
        )
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    allowed = ("float32", "bfloat16", "float16")
    if not args.dtypes or any(d not in allowed for d in args.dtypes):
        parser.error(f"--dtypes takes some of {list(allowed)}; got {args.dtypes}")
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    return args


def main(argv=None):
    args = parse_args(argv)
    if len(args.backends) > 1:
        return _run_each_backend(args, argv)
    _start_backend(args.backends[0], args.device)
    from benchmarks import common

    if args.device == "cpu":
        common.hide_gpus()
    results = {
        "machine": common.machine(args.device),
        "args": vars(args),
        "sections": {},
    }
    print(json.dumps(results["machine"], indent=1), flush=True)
    tables = []
    with common.device_scope(args.device):
        for number in args.sections:
            section = importlib.import_module(SECTIONS[number])
            title = section.__doc__.splitlines()[0].split(": ", 1)[-1]
            print(f"\n== section {number}: {title}", flush=True)
            result = section.run(args)
            results["sections"][number] = result
            tables.append(
                common.format_table(result["title"], result["columns"], result["rows"])
            )
            print("\n" + tables[-1], flush=True)
            _write(args.out, results)  # keep what is done if a later section fails
    results["machine"]["load_average_end"] = common.machine(args.device)["load_average"]
    _write(args.out, results)
    if len(tables) > 1:
        print("\n== all sections\n\n" + "\n".join(tables))
    print(f"wrote {args.out}")


def _start_backend(backend, device):
    """Sets the environment Keras and its backend read when they are imported."""
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise SystemExit(
                f"--backend {backend}: Keras was already imported with the "
                f"{keras.backend.backend()} backend in this process."
            )
    os.environ["KERAS_BACKEND"] = backend
    if device == "cpu":  # jax and torch pick their devices when imported
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"


def _run_each_backend(args, argv):
    """Runs the suite once per backend, each in a fresh process, and merges them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    merged = {"backends": {}}
    for backend in args.backends:
        out = _backend_path(args.out, backend)
        command = [sys.executable, "-m", "benchmarks.run", *_without_backend(argv)]
        command += ["--backend", backend, "--out", out]
        command += ["--sections", ",".join(args.sections)]
        print(f"\n==== {backend}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)
        with open(out) as results:
            merged["backends"][backend] = json.load(results)
        _write(args.out, merged)
    print(f"wrote {args.out}")


def _without_backend(argv):
    """`argv` less its `--backend`, `--out` and `--sections` options."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--backend", "--out", "--sections"):
            skip = True
        elif not arg.startswith(("--backend=", "--out=", "--sections=")):
            kept.append(arg)
    return kept


def _backend_path(path, backend):
    """`results.json` becomes `results-jax.json`."""
    root, extension = os.path.splitext(path)
    return f"{root}-{backend}{extension or '.json'}"


def _write(path, results):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as out:
        json.dump(results, out, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
