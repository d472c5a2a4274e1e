"""Section 6: forward and training step against the Keras built-ins, on any backend.

It runs on the backend Keras was started with (`--backend` picks it), with
the model compiled as `model.compile()` compiles it there: TensorFlow graph
mode on a CPU, jax's `jit`, torch eagerly. Two passes are timed:

- forward: `predict_on_batch` of `Input -> pooling`;
- training step: `train_on_batch` of `Input -> Scale -> pooling -> Dense`,
  where `Scale` is a trainable per-channel factor, so the gradient flows
  back through the pooling, as it does into a backbone.

The input is a backend tensor made once, so no call copies it from NumPy.
Under bfloat16 the input is 16-bit, as a mixed-precision backbone outputs
it, and every layer runs under `mixed_bfloat16`.
"""

import keras
import numpy as np

import keras_globalpool as kgp
from benchmarks.common import (
    interleaved_times,
    keras_ratios,
    median,
    paired_ratio,
    ratio_columns,
    verdict,
)

SHAPES = ((128, 7, 7, 2048), (64, 14, 14, 512), (64, 28, 28, 256))
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
PASSES = ("forward", "train step")
CLASSES = 10

# Our layer against the Keras layers a user would write instead.
PAIRS = {
    "avg": lambda policy: keras.layers.GlobalAveragePooling2D(dtype=policy),
    "max": lambda policy: keras.layers.GlobalMaxPooling2D(dtype=policy),
    "mixed": lambda policy: _keras_mixed(policy),
}
# Priced against our avg: they do more work by design.
EXTRAS = ("attention", "gem")

CONTROL = "keras_avg_again"
AVG_MAX_TARGET = 1.00
MIXED_TF_GRAPH_SPEEDUP = 1.3


class Scale(keras.layers.Layer):
    """A trainable factor per channel: the stand-in for a backbone's last layer."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * keras.ops.cast(self.scale, inputs.dtype)


def _keras_mixed(policy):
    """GAP + GMP + Concatenate, what a user writes for mixed pooling in Keras."""
    gap = keras.layers.GlobalAveragePooling2D(dtype=policy)
    gmp = keras.layers.GlobalMaxPooling2D(dtype=policy)
    concat = keras.layers.Concatenate(dtype=policy)
    return lambda x: concat([gap(x), gmp(x)])


def _poolings(policy):
    """Name to a function that makes a fresh pooling under `policy`."""
    poolings = {}
    for name, keras_pooling in PAIRS.items():
        poolings[name] = lambda name=name: kgp.get(name, dtype=policy)
        poolings[f"keras_{name}"] = lambda make=keras_pooling: make(policy)
    for name in EXTRAS:
        poolings[name] = lambda name=name: kgp.get(name, dtype=policy)
    # A second copy of Keras's avg: its ratio to the first is this run's noise.
    poolings[CONTROL] = lambda: PAIRS["avg"](policy)
    return poolings


def _forward(shape, dtype, pooling, x):
    inputs = keras.Input(shape[1:], dtype=dtype)
    model = keras.Model(inputs, pooling(inputs))
    model.compile()

    def run():
        model.predict_on_batch(x)

    return run


def _train_step(shape, dtype, policy, pooling, x, y):
    inputs = keras.Input(shape[1:], dtype=dtype)
    pooled = pooling(Scale(dtype=policy)(inputs))
    outputs = keras.layers.Dense(CLASSES, dtype=policy)(pooled)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    def run():
        model.train_on_batch(x, y)

    return run


def measure_group(shape, dtype, step, repeats):
    """Seconds per round of every pooling at one shape, dtype and pass."""
    policy = POLICIES[dtype]
    rng = np.random.default_rng(0)
    # Positive and negative values, as after a backbone's last BatchNorm.
    x = keras.ops.cast(rng.standard_normal(shape, "float32"), dtype)
    y = keras.ops.convert_to_tensor(rng.integers(0, CLASSES, shape[0]), "int32")
    runners = {}
    for name, make in _poolings(policy).items():
        if step == "forward":
            runners[name] = _forward(shape, dtype, make(), x)
        else:
            runners[name] = _train_step(shape, dtype, policy, make(), x, y)
    return interleaved_times(runners, repeats, calls=2)


def _mixed_ok(row, backend):
    """Mixed: 1.3x faster than Keras in TensorFlow graph mode, else not slower."""
    if backend == "tensorflow":
        return row["mixed speed-up"] >= MIXED_TF_GRAPH_SPEEDUP
    return row["mixed / keras"] <= AVG_MAX_TARGET


def run(args):
    backend = keras.backend.backend()
    rows = []
    for step in PASSES:
        for dtype in (d for d in args.dtypes if d in POLICIES):
            for shape in SHAPES:
                times = measure_group(shape, dtype, step, args.repeats)
                row = {
                    "backend": backend,
                    "pass": step,
                    "dtype": dtype,
                    "shape": str(shape),
                    "avg ms": 1e3 * median(times["avg"]),
                }
                row.update(keras_ratios(times, PAIRS, EXTRAS))
                row["keras / keras"] = paired_ratio(times, CONTROL, "keras_avg")
                row["targets met"] = verdict(
                    row["avg / keras"] <= AVG_MAX_TARGET
                    and row["max / keras"] <= AVG_MAX_TARGET
                    and _mixed_ok(row, backend)
                )
                print(_line(row), flush=True)
                rows.append(row)
    return {
        "title": f"6. Forward and training step against the Keras built-ins on "
        f"{backend} (time ratio, lower is faster)",
        "columns": [
            "backend",
            "pass",
            "dtype",
            "shape",
            "avg ms",
            *ratio_columns(EXTRAS),
            "keras / keras",
            "targets met",
        ],
        "rows": rows,
        "control": "keras / keras: Keras's avg against a second copy of itself, "
        "timed like the others; how far from 1.00 it lands is this run's noise",
        "targets": {
            "avg / keras, max / keras": f"<= {AVG_MAX_TARGET}",
            "mixed speed-up": f">= {MIXED_TF_GRAPH_SPEEDUP} on TensorFlow (graph "
            f"mode); mixed / keras <= {AVG_MAX_TARGET} on jax and torch",
        },
    }


def _line(row):
    extras = " ".join(f"{name}/avg {row[f'{name} / avg']:.2f}" for name in EXTRAS)
    return (
        f"  {row['backend']:10} {row['pass']:10} {row['dtype']:8} "
        f"{row['shape']:18} avg {row['avg / keras']:.2f} "
        f"max {row['max / keras']:.2f} mixed {row['mixed / keras']:.2f} {extras} "
        f"control {row['keras / keras']:.2f}"
    )
