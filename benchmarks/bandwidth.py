"""Section 2: how close each pooling comes to the machine's read bandwidth.

Global pooling reads every input byte once and writes almost nothing, so
it is memory-bound. Its GB/s (input bytes over time) is set against the
GB/s of a plain multi-threaded sum of the same tensor, each sample's
elements summed in one contiguous run (`reduce_sum` of the tensor reshaped
to `(batch, -1)`), the fastest pattern a reduction has. The reference and
the poolings run the same way, as compiled Keras models called as
`predict_on_batch` calls them, timed in the same rounds, so the framework's
fixed cost per call is in both; the reference is the faster of its graph
mode and XLA figures.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import keras_globalpool as kgp
from benchmarks.common import interleaved_times, median, predict_runner, verdict
from benchmarks.layers_vs_keras import SHAPES

POOLINGS = ("avg", "max", "mixed")
KERAS = {
    "keras avg": keras.layers.GlobalAveragePooling2D,
    "keras max": keras.layers.GlobalMaxPooling2D,
}
TARGET_SHAPE = (128, 7, 7, 2048)
TARGET = 0.70


def _runner(layer, x, jit_compile):
    inputs = keras.Input(x.shape[1:], batch_size=x.shape[0])
    return predict_runner(keras.Model(inputs, layer(inputs)), x, jit_compile)


def _row_sums(x):
    return ops.sum(ops.reshape(x, (x.shape[0], -1)), axis=1)


def _reference(x, jit_compile):
    inputs = keras.Input(x.shape[1:], batch_size=x.shape[0])
    model = keras.Model(inputs, keras.layers.Lambda(_row_sums)(inputs))
    return predict_runner(model, x, jit_compile)


def run(args):
    rows = []
    for shape in SHAPES:
        x = tf.constant(np.random.default_rng(0).random(shape, "float32"))
        gigabytes = x.shape.num_elements() * 4 / 1e9
        runners = {"sum graph": _reference(x, False), "sum xla": _reference(x, True)}
        for mode, jit_compile in (("graph", False), ("xla", True)):
            for name in POOLINGS:
                runners[f"{name} {mode}"] = _runner(kgp.get(name), x, jit_compile)
            for name, layer in KERAS.items():
                runners[f"{name} {mode}"] = _runner(layer(), x, jit_compile)
        times = interleaved_times(runners, args.repeats, calls=2)
        reference = gigabytes / min(
            median(times["sum graph"]), median(times["sum xla"])
        )
        for mode in ("graph", "xla"):
            row = {
                "shape": str(shape),
                "mode": mode,
                "MB": 1e3 * gigabytes,
                "reference GB/s": reference,
            }
            for name in (*POOLINGS, *KERAS):
                speed = gigabytes / median(times[f"{name} {mode}"])
                row[f"{name} GB/s"] = speed
                row[f"{name} %"] = 100 * speed / reference
            if shape == TARGET_SHAPE:
                row["target met"] = verdict(row["avg %"] >= 100 * TARGET)
            print(
                f"  {row['shape']:18} {mode:5} reference {reference:.1f} GB/s, avg "
                f"{row['avg %']:.0f}%, max {row['max %']:.0f}%, "
                f"mixed {row['mixed %']:.0f}%",
                flush=True,
            )
            rows.append(row)
    return {
        "title": "2. Bandwidth: GB/s read, as % of a multi-threaded reduce_sum of "
        "the same tensor",
        "columns": [
            "shape",
            "mode",
            "reference GB/s",
            "avg GB/s",
            "avg %",
            "max %",
            "mixed %",
            "keras avg %",
            "keras max %",
            "target met",
        ],
        "rows": rows,
        "targets": {"avg %": f">= {100 * TARGET:.0f} at {TARGET_SHAPE}, graph mode"},
    }
