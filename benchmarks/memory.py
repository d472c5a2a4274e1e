"""Section 5: peak memory of training with the flatten head and the pooling heads.

Each case runs in its own process, which builds `kgp.build_classifier(
"ResNet50", 10, weights=None)` on 224x224 images, compiles it with Adam and
trains a few steps of batch 32 on random data. The figures come from the
kernel: the process's peak resident memory (`VmHWM` in /proc/self/status),
and its growth over the resident memory of the built, untrained model, which
is what training added. Two settings: the backbone frozen (transfer
learning, the usual case) and trainable (training from scratch).
"flatten" is Flatten + Dense, "flatten-4096" adds a
4096-unit hidden layer (VGG's); the pooling heads have no hidden layer.
"""

import json
import os
import sys

from benchmarks.common import run_child, verdict

HEADS = ("flatten-4096", "flatten", "avg", "max", "mixed", "gem", "attention")
SETTINGS = {"frozen": True, "trainable": False}


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(head, freeze, image_size, steps):
    """Trains one case and prints its memory figures as JSON (in a child)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    import keras_globalpool as kgp

    pooling, hidden = ("flatten", (4096,)) if head == "flatten-4096" else (head, ())
    model = kgp.build_classifier(
        "ResNet50",
        10,
        input_shape=(image_size, image_size, 3),
        pooling=pooling,
        hidden_units=hidden,
        weights=None,
        freeze_backbone=freeze,
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32 * steps, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, 10, 32 * steps)
    built_kib = _status_kib("VmRSS")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    gpu_peak = None
    if tf.config.list_physical_devices("GPU"):
        gpu_peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    print(
        json.dumps(
            {
                "gpu_peak_mib": gpu_peak,
                "peak_mib": _status_kib("VmHWM") / 1024,
                "built_mib": built_kib / 1024,
                "params_m": model.count_params() / 1e6,
                "trainable_params_m": sum(
                    int(np.prod(w.shape)) for w in model.trainable_weights
                )
                / 1e6,
            }
        )
    )


def _measure(head, freeze, image_size, steps, device):
    return run_child(
        "benchmarks.memory",
        [head, str(int(freeze)), str(image_size), str(steps)],
        device,
    )


def run(args):
    image_size = 96 if args.quick else 224
    steps = 2 if args.quick else 3
    rows = []
    for setting, freeze in SETTINGS.items():
        flatten_peak = None  # each setting is compared with its own flatten-4096
        for head in HEADS:
            figures = _measure(head, freeze, image_size, steps, args.device)
            if "failed" in figures:
                print(f"  {setting:9} {head:12} failed: {figures['failed']}")
                rows.append({"backbone": setting, "head": head, **figures})
                continue
            training = figures["peak_mib"] - figures["built_mib"]
            if head == "flatten-4096":
                flatten_peak = figures["peak_mib"]
            row = {
                "backbone": setting,
                "head": head,
                "params (M)": figures["params_m"],
                "trainable (M)": figures["trainable_params_m"],
                "peak MiB": figures["peak_mib"],
                "training adds MiB": training,
            }
            if flatten_peak:
                row["peak vs flatten-4096"] = figures["peak_mib"] / flatten_peak
            if figures["gpu_peak_mib"] is not None:
                row["GPU peak MiB"] = figures["gpu_peak_mib"]
            rows.append(row)
            print(
                f"  {setting:9} {head:12} peak {figures['peak_mib']:7.0f} MiB, "
                f"training adds {training:6.0f} MiB",
                flush=True,
            )
    pooling_rows = [r for r in rows if not r["head"].startswith("flatten")]
    below = all(r.get("peak vs flatten-4096", 0) < 1 for r in pooling_rows)
    columns = [
        "backbone",
        "head",
        "params (M)",
        "trainable (M)",
        "peak MiB",
        "training adds MiB",
        "peak vs flatten-4096",
    ]
    if any("failed" in row for row in rows):
        columns.append("failed")
    if any("GPU peak MiB" in row for row in rows):
        columns.append("GPU peak MiB")
    return {
        "title": f"5. Peak memory of training (ResNet50, {image_size}x{image_size}, "
        "batch 32, Adam)",
        "columns": columns,
        "rows": rows,
        "targets": {"note": f"pooling heads below flatten-4096: {verdict(below)}"},
    }


if __name__ == "__main__":
    head, freeze, image_size, steps = sys.argv[1:5]
    worker(head, bool(int(freeze)), int(image_size), int(steps))
