"""Runs the benchmark suite, prints its tables and writes them as JSON.

    python -m benchmarks.run                 # every section
    python -m benchmarks.run --quick         # fewer repeats and epochs
    python -m benchmarks.run --sections 1,2  # some sections only
    python -m benchmarks.run --sections 1 --dtypes float32  # section 1 in float32
    python -m benchmarks.run --device gpu    # the same on the first GPU

Sections: 1 layers against the Keras built-ins, 2 bandwidth, 3 head overhead
on ResNet50 and MobileNetV2, 4 cached-feature training, 5 peak training
memory. Every figure is a ratio of medians measured in this run.
"""

import argparse
import importlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SECTIONS = {
    "1": "benchmarks.layers_vs_keras",
    "2": "benchmarks.bandwidth",
    "3": "benchmarks.head_overhead",
    "4": "benchmarks.cached_training",
    "5": "benchmarks.memory",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated section numbers (default: all)",
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
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    allowed = ("float32", "bfloat16", "float16")
    if not args.dtypes or any(d not in allowed for d in args.dtypes):
        parser.error(f"--dtypes takes some of {list(allowed)}; got {args.dtypes}")
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    return args


def main(argv=None):
    args = parse_args(argv)
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
            print(
                f"\n== section {number}: {section.__doc__.splitlines()[0]}", flush=True
            )
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


def _write(path, results):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as out:
        json.dump(results, out, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
