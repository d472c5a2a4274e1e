"""Where `compare` trains: in its own process, or in several processes at once.

On a CPU, TensorFlow spreads the small convolutions of one training over
its cores poorly: on 2 cores, one training with 2 threads ran only 1.14
times as fast as with 1. Two trainings side by side, one thread each, do
1.6 times the work of one after the other. `ProcessRunner` trains the runs
that way, in spawned processes (TensorFlow is not safe to fork). The images
reach the workers as memory-mapped `.npy` files, not pickled through a pipe
once per worker; a folder that streams reaches them as its list of files.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import pathlib
import queue
import tempfile
import threading
import time

import keras
import numpy as np

from keras_globalpool.cli.data.stream import FileImageDataset
from keras_globalpool.cli.progress import EpochProgress
from keras_globalpool.cli.runs import RunContext

# How often, in seconds, the main process looks for finished epochs.
_POLL_SECONDS = 0.25


def cpu_cores():
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(settings, has_gpu):
    """How many trainings run at once when `--workers` is not given.

    One per CPU core, at most one per training, when the whole model trains
    on a CPU; one otherwise: a GPU is shared badly, and cached features
    train in a fraction of the time already.

    Args:
        settings: `CompareSettings`.
        has_gpu: bool. Whether TensorFlow sees a GPU.

    Returns:
        int >= 1.
    """
    if has_gpu or settings.frozen:
        return 1
    return max(1, min(cpu_cores(), len(settings.heads) * settings.seeds))


class InlineRunner:
    """Trains each run in this process, when its result is asked for.

    Args:
        context: `RunContext`.
        progress: rich `Progress`.
        epochs_task: the task that shows the current run's batches.
    """

    workers = 1

    def __init__(self, context, progress, epochs_task):
        self.context, self.progress, self.epochs_task = context, progress, epochs_task

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def result(self, head, seed, label):
        """Trains `head` from `seed`; returns its `RunResult`, model included."""
        callback = EpochProgress(self.progress, self.epochs_task, label)
        return self.context.run(head, seed, [callback])


# === Worker processes ===

_worker = {}


class _EpochTicks(keras.callbacks.Callback):
    """Tells the main process each time an epoch ends."""

    def __init__(self, ticks):
        super().__init__()
        self.ticks = ticks

    def on_epoch_end(self, epoch, logs=None):
        self.ticks.put(1)


def _exit_with(parent):
    """Ends this worker once `parent` is gone, as after a SIGKILL of `compare`."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _to_file(dataset, path):
    """`dataset` with its images in a `.npy` file at `path`, as a light tuple.

    A `FileImageDataset` goes as it is, a list of files that each worker
    decodes batch by batch: `path` stays unwritten.
    """
    fields = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)}
    if isinstance(dataset, FileImageDataset):
        return type(dataset), fields, None
    np.save(path, dataset.x)
    del fields["x"]
    return type(dataset), fields, path


def _from_file(kind, fields, path):
    if path is None:
        return kind(**fields)
    return kind(x=np.load(path, mmap_mode="r"), **fields)


def _start_worker(settings, train, test, threads, ticks, parent):
    import tensorflow as tf

    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.get_logger().setLevel("ERROR")
    train, test = _from_file(*train), _from_file(*test)
    _worker["context"] = RunContext(settings, train, test)
    _worker["ticks"] = ticks


def _train_in_worker(head, seed, model_path):
    result = _worker["context"].run(head, seed, [_EpochTicks(_worker["ticks"])])
    if model_path is not None:
        result.model.save(model_path)
    result.model = None
    keras.backend.clear_session(free_memory=True)
    return result


class ProcessRunner:
    """Trains every run in `workers` processes, in the order given.

    The first seed's model of each head is saved by its worker and loaded
    back here, for heatmaps, latency and export.

    Args:
        context: `RunContext` of this process; its settings and data go to
            the workers.
        runs: list of `(head, seed)` pairs, in the order to train them.
        workers: int >= 2. Processes.
        progress: rich `Progress`.
        epochs_task: the task that counts the epochs of every run.
    """

    def __init__(self, context, runs, workers, progress, epochs_task):
        self.context, self.runs, self.workers = context, runs, workers
        self.progress, self.epochs_task = progress, epochs_task
        self._futures, self._model_paths = {}, {}

    def __enter__(self):
        spawn = multiprocessing.get_context("spawn")
        self._ticks = spawn.Queue()
        self._folder = tempfile.TemporaryDirectory(prefix="keras-globalpool-")
        threads = max(1, cpu_cores() // self.workers)
        context = self.context
        folder = pathlib.Path(self._folder.name)
        train = _to_file(context.train, folder / "train.npy")
        test = _to_file(context.test, folder / "test.npy")
        data = (context.settings, train, test)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=spawn,
            initializer=_start_worker,
            initargs=(*data, threads, self._ticks, os.getpid()),
        )
        self.progress.reset(
            self.epochs_task,
            total=len(self.runs) * context.settings.epochs,
            description=f"  epochs, {self.workers} trainings at a time",
        )
        for head, seed in self.runs:
            path = None
            if not any(kept == head for kept, _ in self._model_paths):
                path = str(pathlib.Path(self._folder.name) / f"{head}.keras")
                self._model_paths[head, seed] = path
            self._futures[head, seed] = self._pool.submit(
                _train_in_worker, head, seed, path
            )
        return self

    def __exit__(self, *exc_info):
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._ticks.close()
        self._folder.cleanup()
        return False

    def _drain_ticks(self):
        while True:
            try:
                self.progress.advance(self.epochs_task, self._ticks.get_nowait())
            except queue.Empty:
                return

    def result(self, head, seed, label):
        """Waits for `head` from `seed`; returns its `RunResult`.

        Its model is there for the first seed of each head, `None` otherwise.
        """
        future = self._futures[head, seed]
        while not future.done():
            self._drain_ticks()
            concurrent.futures.wait([future], timeout=_POLL_SECONDS)
        self._drain_ticks()
        result = future.result()
        path = self._model_paths.pop((head, seed), None)
        if path is not None:
            result.model = keras.saving.load_model(path)
            os.remove(path)
        return result
