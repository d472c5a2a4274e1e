"""Section 1: the layers against the Keras built-ins, inside compiled models.

Each model is `Input -> pooling`, compiled as Keras compiles it: graph mode
(`jit_compile=False`, what `model.compile()` picks on TensorFlow) and
whole-model XLA (`jit_compile=True`). Under bfloat16 and float16 the input
is 16-bit, as a mixed-precision backbone outputs it, and every layer runs
under the matching `mixed_*` policy.
"""

import keras
import numpy as np

import keras_globalpool as kgp
from benchmarks.common import (
    interleaved_times,
    keras_ratios,
    median,
    predict_runner,
    ratio_columns,
    verdict,
)

SHAPES = ((128, 7, 7, 2048), (64, 14, 14, 512), (64, 28, 28, 256))
MODES = {"graph": False, "xla": True}
POLICIES = {
    "float32": "float32",
    "bfloat16": "mixed_bfloat16",
    "float16": "mixed_float16",
}

# Our layer against the Keras layers a user would write instead.
PAIRS = {
    "avg": (
        "avg",
        lambda x, dtype: keras.layers.GlobalAveragePooling2D(dtype=dtype)(x),
    ),
    "max": ("max", lambda x, dtype: keras.layers.GlobalMaxPooling2D(dtype=dtype)(x)),
    "mixed": (
        "mixed",
        lambda x, dtype: keras.layers.Concatenate(dtype=dtype)(
            [
                keras.layers.GlobalAveragePooling2D(dtype=dtype)(x),
                keras.layers.GlobalMaxPooling2D(dtype=dtype)(x),
            ]
        ),
    ),
}
# Every other pooling in the registry, priced against our avg: they do more
# work by design.
EXTRAS = tuple(name for name in kgp.POOLINGS if name not in PAIRS)
# Arguments the extras need: CSRA gets the 1000 classes of section 3's head.
EXTRA_ARGS = {"csra": {"num_classes": 1000}}

AVG_MAX_TARGET = 1.05
MIXED_GRAPH_TARGET = 1.3


def _model(shape, dtype, build):
    inputs = keras.Input(shape[1:], batch_size=shape[0], dtype=dtype)
    return keras.Model(inputs, build(inputs))


def _ours(name, policy):
    return lambda x: kgp.get(name, dtype=policy, **EXTRA_ARGS.get(name, {}))(x)


def measure_group(shape, dtype, jit_compile, repeats):
    """Seconds per round of every model at one shape, dtype and mode."""
    policy = POLICIES[dtype]
    x = keras.ops.cast(np.random.default_rng(0).random(shape, "float32"), dtype)
    builders = {}
    for pair, (ours, keras_model) in PAIRS.items():
        builders[pair] = _ours(ours, policy)
        builders[f"keras_{pair}"] = lambda x, f=keras_model: f(x, policy)
    for name in EXTRAS:
        builders[name] = _ours(name, policy)
    runners = {
        name: predict_runner(_model(shape, dtype, build), x, jit_compile)
        for name, build in builders.items()
    }
    return interleaved_times(runners, repeats, calls=2)


def run(args):
    rows = []
    for mode, jit_compile in MODES.items():
        for dtype in args.dtypes:
            for shape in SHAPES:
                times = measure_group(shape, dtype, jit_compile, args.repeats)
                row = {"mode": mode, "dtype": dtype, "shape": str(shape)}
                for pair in PAIRS:
                    row[f"{pair} ms"] = 1e3 * median(times[pair])
                    row[f"keras {pair} ms"] = 1e3 * median(times[f"keras_{pair}"])
                row.update(keras_ratios(times, PAIRS, EXTRAS))
                mixed_ok = (
                    row["mixed speed-up"] >= MIXED_GRAPH_TARGET
                    if mode == "graph"
                    else row["mixed / keras"] <= AVG_MAX_TARGET
                )
                row["targets met"] = verdict(
                    row["avg / keras"] <= AVG_MAX_TARGET
                    and row["max / keras"] <= AVG_MAX_TARGET
                    and mixed_ok
                )
                print(_line(row), flush=True)
                rows.append(row)
    return {
        "title": "1. Layers against the Keras built-ins (time ratio, lower is faster)",
        "columns": [
            "mode",
            "dtype",
            "shape",
            "avg ms",
            *ratio_columns(EXTRAS),
            "targets met",
        ],
        "rows": rows,
        "targets": {
            "avg / keras, max / keras": f"<= {AVG_MAX_TARGET} in both modes",
            "mixed speed-up": f">= {MIXED_GRAPH_TARGET} in graph mode; "
            f"mixed / keras <= {AVG_MAX_TARGET} under XLA (not slower, within noise)",
        },
    }


def _line(row):
    extras = " ".join(f"{name}/avg {row[f'{name} / avg']:.1f}" for name in EXTRAS)
    return (
        f"  {row['mode']:5} {row['dtype']:8} {row['shape']:18} "
        f"avg {row['avg / keras']:.2f} max {row['max / keras']:.2f} "
        f"mixed {row['mixed / keras']:.2f} {extras}"
    )
