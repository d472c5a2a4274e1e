"""What `compare` measures besides accuracy: peak memory and inference latency.

Peak memory is read from the operating system or the GPU allocator, not
estimated: `tracemalloc` would miss TensorFlow's allocations, which happen
in C++.
"""

import os
import resource
import statistics
import sys
import time

import tensorflow as tf

_MIB = 2**20
_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(field):
    with open(_PROC_STATUS) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not found in {_PROC_STATUS}")


class ProcessPeakRss:
    """The process's peak resident memory, reset per measurement (Linux)."""

    label = "peak RSS"
    description = (
        "peak resident set size of the process that trained (VmHWM in "
        "/proc/self/status, reset through /proc/self/clear_refs before each "
        "training), the highest over the seeds; it includes the TensorFlow "
        "runtime and the data set held in memory, which every head shares; "
        "(+N) is the largest rise over the resident size when a training "
        "started. The resident size rarely shrinks, as TensorFlow keeps kernels "
        "and graphs, so later trainings start higher and a process's first "
        "training also pays one-time start-up costs: compare the rises"
    )

    @staticmethod
    def available():
        return os.access(_CLEAR_REFS, os.W_OK) and os.path.exists(_PROC_STATUS)

    def reset(self):
        with open(_CLEAR_REFS, "w") as clear_refs:
            clear_refs.write("5")  # Resets VmHWM to the current RSS.
        return _status_kib("VmRSS") * 1024 / _MIB

    def peak(self):
        return _status_kib("VmHWM") * 1024 / _MIB


class LifetimePeakRss:
    """The process's peak resident memory since it started (any Unix)."""

    label = "peak RSS (lifetime)"
    description = (
        "peak resident set size of the whole process since it started "
        "(getrusage ru_maxrss); it cannot be reset, so a head may show a peak "
        "an earlier head reached"
    )

    @staticmethod
    def available():
        return True

    def reset(self):
        return self.peak()

    def peak(self):
        # Linux reports KiB, macOS bytes.
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / _MIB


class GpuPeakMemory:
    """Peak GPU memory held by TensorFlow's allocator on the first GPU."""

    label = "peak GPU memory"
    description = (
        "peak memory held by TensorFlow's allocator on GPU:0 "
        "(tf.config.experimental.get_memory_info, reset before each head); "
        "host memory is not counted; (+N) is the rise over the allocation "
        "when the head started"
    )

    @staticmethod
    def available():
        return bool(tf.config.list_physical_devices("GPU"))

    def reset(self):
        tf.config.experimental.reset_memory_stats("GPU:0")
        return tf.config.experimental.get_memory_info("GPU:0")["current"] / _MIB

    def peak(self):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / _MIB


# In order of preference: the first available one is used.
MEMORY_METERS = (GpuPeakMemory, ProcessPeakRss, LifetimePeakRss)


def memory_meter():
    """Returns the most precise memory meter this machine offers."""
    return next(meter() for meter in MEMORY_METERS if meter.available())


def call_latency_ms(predict, batch, repeats=30, warmup=3):
    """Median time, in ms, of `predict(batch)`.

    Args:
        predict: a function of one batch, such as `model.predict_on_batch`
            or what `kgp.load_exported` returns.
        batch: the batch it is called on.
        repeats: int. Timed calls. Defaults to `30`.
        warmup: int. Untimed calls first, which trace the function or warm
            the runtime up. Defaults to `3`.

    Returns:
        float. The median over `repeats` calls.

    Example:

    >>> from keras_globalpool.cli.measure import call_latency_ms
    >>> call_latency_ms(np.sum, np.ones(4), repeats=5) >= 0
    True
    """
    for _ in range(warmup):
        predict(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def latency_ms(model, image, repeats=30, warmup=3):
    """Median time, in ms, for `model` to predict one image.

    Args:
        model: a `keras.Model`.
        image: one input, without the batch axis.
        repeats: int. Timed calls. Defaults to `30`.
        warmup: int. Untimed calls first, which trace the function.
            Defaults to `3`.

    Returns:
        float. The median over `repeats` calls of `model.predict_on_batch`
        on a batch of one.
    """
    return call_latency_ms(model.predict_on_batch, image[None], repeats, warmup)
