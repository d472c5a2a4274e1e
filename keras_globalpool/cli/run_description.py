"""What the report says about a comparison: the machine and how it measured."""

import os
import platform

import keras
import tensorflow as tf

from keras_globalpool.cli.backbones import SMALL_CNN


def machine():
    """The machine and the versions that ran the comparison, as a dict."""
    gpus = tf.config.list_physical_devices("GPU")
    device = (
        ", ".join(
            tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in gpus
        )
        if gpus
        else "CPU only"
    )
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device,
        **versions,
        "description": (
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{device}; TensorFlow {versions['tensorflow']}, "
            f"Keras {versions['keras']}, Python {versions['python']}"
        ),
    }


def backbone_description(settings, trainer):
    """How the backbone was set up and trained, in one sentence."""
    if settings.backbone == SMALL_CNN:
        return (
            f"{SMALL_CNN}, trained from scratch with each head ({trainer.description})"
        )
    if not settings.frozen:
        return (
            f"{settings.backbone}, random weights, trained from scratch with each "
            f"head ({trainer.description})"
        )
    if trainer.cache_reused:
        cached = f"; the features were reused from --cache-dir {settings.cache_dir}"
    elif trainer.cache_seconds is None:
        cached = ""
    else:
        cached = f"; caching the features took {trainer.cache_seconds:.1f} s, once"
    return (
        f"{settings.backbone}, weights {settings.weights!r}, frozen ("
        f"{trainer.description}{cached})"
    )


def measurement(meter, jit_compile, workers=1):
    """How each column of the table was measured, by column."""
    at_once = (
        "one training at a time"
        if workers == 1
        else f"{workers} trainings at a time, each in a process of its own"
    )
    return {
        "head params": "weights of the pooler and every layer after it",
        "total params": "weights of the whole model, backbone included",
        "test accuracy": "mean ± sample standard deviation over the seeds, on "
        "the held-out test images",
        "train time (s)": "wall-clock time of one training (all epochs, graph "
        f"tracing included), mean over the seeds; jit_compile={jit_compile}; "
        f"{at_once}",
        "time / epoch (s)": "train time divided by the epochs",
        "peak memory (MiB)": meter.description,
        "latency / image (ms)": "median over 30 calls of `predict_on_batch` on one "
        "image of the first seed's model, after 3 warm-up calls",
    }
