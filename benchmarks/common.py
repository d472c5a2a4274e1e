"""What every section shares: timing, the machine record and table printing.

Every figure the suite reports is a ratio of medians taken in one run: the
candidates of a comparison are called in turn, round after round, in a
shuffled order and each from cold caches, so a noisy neighbour slows all of
them alike and none inherits another's cached data.
"""

import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

import keras
import numpy as np


def interleaved_times(functions, repeats, calls=1, seed=0):
    """Seconds per call of each function, timed in turn, round after round.

    Each round takes the functions in a new random order and evicts the
    CPU caches before every call. Otherwise a function would find in cache
    what the one before it left there: the input, when it read the same
    one, or nothing of it, after a function that wrote large temporaries.

    Args:
        functions: dict of name to a function of no argument that runs the
            work and returns once it is done.
        repeats: int. Rounds; each round times every function once.
        calls: int. Calls per timing (each after an eviction).
        seed: int. Seeds the order of the rounds.

    Returns:
        dict of name to the list of seconds per call, one per round.
    """
    for function in functions.values():
        function()  # warm up: tracing, compiling, allocating
        function()
    order = list(functions)
    rng = random.Random(seed)
    seconds = {name: [] for name in functions}
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            total = 0.0
            for _ in range(calls):
                evict_caches()
                start = time.perf_counter()
                functions[name]()
                total += time.perf_counter() - start
            seconds[name].append(total / calls)
    return seconds


_EVICTION = None


def evict_caches():
    """Reads a buffer larger than any CPU cache, evicting what they held.

    It reads rather than writes, so the timed call that follows has no dirty
    lines to write back.
    """
    global _EVICTION
    if _EVICTION is None:
        _EVICTION = np.ones(128 * 2**20 // 8)  # 128 MiB
    return float(_EVICTION.sum())


def median(times):
    """The median of a list of seconds."""
    return statistics.median(times)


def paired_ratio(times, numerator, denominator):
    """The median over rounds of `numerator`'s time over `denominator`'s.

    Both were timed in the same round, moments apart, so a neighbour's load
    cancels out of each ratio better than out of a ratio of medians.
    """
    return statistics.median(
        a / b for a, b in zip(times[numerator], times[denominator], strict=True)
    )


def keras_ratios(times, pairs, extras):
    """The ratios of a layers-against-Keras table, from one group of timings.

    Args:
        times: dict from `interleaved_times`, holding each of `pairs` and
            its Keras counterpart `keras_<pair>`, `avg`, and each of `extras`.
        pairs: names of our layers timed against Keras's; one is `mixed`.
        extras: names of poolings priced against our avg.

    Returns:
        dict of `"<pair> / keras"`, `"<extra> / avg"` and `"mixed speed-up"`.
    """
    row = {f"{p} / keras": paired_ratio(times, p, f"keras_{p}") for p in pairs}
    row.update({f"{name} / avg": paired_ratio(times, name, "avg") for name in extras})
    row["mixed speed-up"] = 1.0 / row["mixed / keras"]
    return row


def ratio_columns(extras):
    """The columns `keras_ratios` fills, in table order."""
    return [
        "avg / keras",
        "max / keras",
        "mixed / keras",
        "mixed speed-up",
        *(f"{name} / avg" for name in extras),
    ]


def predict_runner(model, x, jit_compile):
    """A function that runs `model` on `x` the way compiled Keras predicts.

    It compiles the model with `jit_compile` and calls the predict function
    `model.predict_on_batch` uses, without the NumPy copy of the output. The
    output is read back, so the call returns when the work is done on a GPU
    as well.
    """
    import tensorflow as tf

    model.compile(jit_compile=jit_compile)
    model.make_predict_function(force=True)
    batch = [(x,)]

    def run():
        outputs = model.predict_function(batch)
        for output in tf.nest.flatten(outputs):
            output.numpy()

    return run


def device_scope(device):
    """The `tf.device` to run on: "cpu", or "gpu" when one is present.

    On jax and torch it is a no-op: `hide_gpus` chose the device before the
    backend was imported.
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise SystemExit("--device gpu: TensorFlow sees no GPU on this machine.")
        return tf.device("/GPU:0")
    return tf.device("/CPU:0")


def hide_gpus():
    """Runs TensorFlow on the CPU, even where a GPU is present.

    jax and torch choose their devices when they are imported: `benchmarks.run`
    hides the GPUs from them in the environment, before it imports Keras.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU features that decide which kernels run: oneDNN turns itself on in
# TensorFlow where AVX-512 is present, and AMX speeds up 16-bit matrix work.
_CPU_FEATURES = ("avx", "avx2", "fma")
_CPU_FAMILIES = ("avx512", "amx")


def cpu_flags():
    """The CPU's vector and matrix features, as `/proc/cpuinfo` lists them.

    Returns:
        A sorted list such as `["avx", "avx2", "fma"]`: the flags that are,
        or start with, one of `avx`, `avx2`, `fma`, `avx512` and `amx`.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(
                        f
                        for f in flags
                        if f in _CPU_FEATURES or f.startswith(_CPU_FAMILIES)
                    )
    except OSError:
        pass
    return []


def _backend_record():
    """The backend, its version, its GPUs, and oneDNN's state on TensorFlow."""
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf
        from tensorflow.python.util import _pywrap_util_port

        gpus = [
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")
        ]
        return {
            "backend": name,
            "tensorflow": tf.__version__,
            "onednn": bool(_pywrap_util_port.IsMklEnabled()),
            "gpus": gpus,
        }
    if name == "jax":
        import jax

        gpus = [str(d) for d in jax.devices() if d.platform != "cpu"]
        return {"backend": name, "jax": jax.__version__, "gpus": gpus}
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"backend": name, "torch": torch.__version__, "gpus": gpus}


def machine(device):
    """What the figures were measured on."""
    return {
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "device": device,
        **_backend_record(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def format_table(title, columns, rows):
    """A Markdown table, ready to paste into the README."""
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "|".join(" --- " for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def verdict(ok):
    """The check mark a target gets in the tables."""
    return "yes" if ok else "NO"


# The repository's root, where `python -m benchmarks.<module>` runs.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(module, arguments, device):
    """Runs `python -m <module> <arguments>` in a fresh process; its last line as JSON.

    Args:
        module: str, such as `"benchmarks.memory"`.
        arguments: list of the command-line arguments, as str.
        device: `"cpu"` hides the GPUs from the child.

    Returns:
        The dict the child printed as its last line, or
        `{"failed": "exit <code>: <last line of stderr>"}` (killed with
        -9, most likely by the kernel's out-of-memory killer).
    """
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"failed": f"exit {done.returncode}: {lines[-1] if lines else ''}"}
    return json.loads(done.stdout.strip().splitlines()[-1])
