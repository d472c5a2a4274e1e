"""Section 7: cached training from a folder of images, streamed to a disk cache.

The data are generated once: random-texture 96x96 JPEGs (PIL, quality 90,
seeded) in 10 class subfolders, a grating whose angle, frequency and tint
depend on the class, under per-pixel noise; a folder of N images holds
symlinks to the first N/10 files of each class, and a separate test folder
is generated with another seed. Every input is
`keras.utils.image_dataset_from_directory(folder, image_size=(96, 96),
batch_size=32)`. The model is `kgp.build_classifier("MobileNetV2", 10,
input_shape=(96, 96, 3), weights=path)`, backbone frozen as the builder
leaves it, compiled with Adam and sparse cross-entropy; every run starts
from the same weights. The backbone file holds random weights
(`weights=None`, seeded) whose BatchNorm statistics are set to one batch
of the images (`calibrated_backbone`): with `weights=None` alone the maps
vanish (about 1e-11) and no head learns. Four parts:

1. Peak memory of `fit_cached` on the folder, each run in a process of its
   own: streaming the dataset into a disk cache (`cache_dir`,
   `memory_budget="256MB"`), against loading every image into an array
   first (`load_directory`, as the command line does) and caching the maps
   in RAM. The figures come from the kernel: `VmHWM` (peak resident memory,
   file-backed pages included), and the largest `RssAnon` and `RssFile`
   seen by a thread sampling `/proc/self/status` every 50 ms. Both runs
   cache the maps (`pooled=False`).
2. Epoch time of `fit_cached` on one map cache read from disk
   (`CachedFeatures.load(path, lazy=True)`) against the same cache loaded
   into RAM (`load(path)`): the median epoch after the first, whose time
   includes tracing and, on disk, a cold read (the files' pages dropped
   with `posix_fadvise` before). A third case reads the RAM arrays through
   the same `CachedSequence` as the disk cache, which parts the reader's
   cost from the disk's.
3. The pooled cache against the map cache (`pooled=True` / `False`), 20
   epochs with the avg head, time including the caching pass, with the
   test accuracy and the largest difference of the trained weights.
4. `fit_cached` against `model.fit` on the same dataset, 20 epochs, the
   caching pass included.
Both cached runs of 3 and 4 train with `shuffle=False` on the order the
dataset gave (shuffled by `image_dataset_from_directory(shuffle=True,
seed=0)`), so the map and pooled heads see the same batches.

    python -m benchmarks.streaming_cache --sizes 5000,10000,20000
"""

import argparse
import gc
import inspect
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks.cached_training import ACCURACY_TOLERANCE, TARGET_SPEEDUP
from benchmarks.common import run_child, verdict

IMAGE_SIZE = 96
CLASSES = 10
BATCH_SIZE = 32
BUDGET = "256MB"
# The old way: every map in RAM, whatever the machine's memory.
IN_MEMORY_BUDGET = "1TB"
DATA_SEED = 0
TEST_SEED = 1
DEFAULTS = {
    "sizes": (5000, 10000, 20000),
    "memory_epochs": 2,
    "speed_size": 5000,
    "speed_epochs": 10,
    "speed_rounds": 2,
    "fit_size": 2000,
    "test_size": 1000,
    "epochs": 20,
}
QUICK = {
    "sizes": (200, 400),
    "memory_epochs": 1,
    "speed_size": 200,
    "speed_epochs": 3,
    "speed_rounds": 1,
    "fit_size": 200,
    "test_size": 100,
    "epochs": 2,
}
# Targets: the streaming peak grows by less than this fraction, or this
# many MiB, from the smallest folder to the largest (design memo, 12).
GROWTH_FRACTION = 0.10
GROWTH_MIB = 100
TARGET_DISK_RATIO = 1.5
# The pooled and map heads agree if every trained weight is within this
# fraction of the largest weight's magnitude, and the test accuracies
# within ACCURACY_TOLERANCE.
WEIGHTS_TOLERANCE = 1e-3
COLUMNS = [
    "part",
    "case",
    "images",
    "seconds",
    "VmHWM MiB",
    "peak RssAnon MiB",
    "peak RssFile MiB",
    "ratio",
    "accuracy",
    "target",
    "met",
    "load (1 min)",
]


# === Data ===


def _texture(rng, label, grid):
    angle = np.pi * label / CLASSES
    frequency = 3 + 2 * (label % 3)
    yy, xx = grid
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(
        2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)) + phase
    )
    tint = np.random.default_rng([DATA_SEED, label]).uniform(0.3, 1.0, 3)
    noise = rng.normal(0, 1, (IMAGE_SIZE, IMAGE_SIZE, 3))
    image = 128 + 80 * wave[..., None] * tint + 30 * noise
    return np.clip(image, 0, 255).astype("uint8")


def _generate(folder, per_class, seed):
    """Writes `per_class` JPEGs into each `folder/class_KK/`; skips a done one."""
    from PIL import Image

    marker = folder / ".complete"
    if marker.exists() and json.loads(marker.read_text()) == [per_class, seed]:
        return
    shutil.rmtree(folder, ignore_errors=True)
    grid = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    for label in range(CLASSES):
        rng = np.random.default_rng([seed, label])
        class_folder = folder / f"class_{label:02d}"
        class_folder.mkdir(parents=True)
        for index in range(per_class):
            image = Image.fromarray(_texture(rng, label, grid))
            image.save(class_folder / f"{index:05d}.jpg", quality=90)
    marker.write_text(json.dumps([per_class, seed]))


def make_data(root, sizes, test_size):
    """`{size: folder}` and the test folder, generated under `root` once.

    The folder of N images links to the first N/10 images of each class in
    `root/all`, which holds as many as the largest folder needs.
    """
    root = Path(root)
    start = time.perf_counter()
    _generate(root / "all", max(sizes) // CLASSES, DATA_SEED)
    _generate(root / "test", test_size // CLASSES, TEST_SEED)
    folders = {}
    for size in sorted(set(sizes)):
        folder = root / f"n{size}"
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            for label in range(CLASSES):
                source = root / "all" / f"class_{label:02d}"
                target = folder / f"class_{label:02d}"
                target.mkdir(parents=True)
                for index in range(size // CLASSES):
                    name = f"{index:05d}.jpg"
                    (target / name).symlink_to(source / name)
            (folder / ".complete").write_text("")
        folders[size] = folder
    print(
        f"  data in {root} ({time.perf_counter() - start:.0f} s): "
        f"{', '.join(str(s) for s in sorted(folders))} images, test {test_size}",
        flush=True,
    )
    return folders, root / "test"


def folder_dataset(folder, shuffle=False, seed=None):
    """The images of `folder` as Keras reads a folder: batches of (images, labels)."""
    return keras.utils.image_dataset_from_directory(
        folder,
        image_size=(IMAGE_SIZE, IMAGE_SIZE),
        batch_size=BATCH_SIZE,
        shuffle=shuffle,
        seed=seed,
        verbose=False,
    )


# === Model ===


def pooled_supported():
    """Whether `cache_features` and `fit_cached` take `pooled` (issue 14)."""
    import keras_globalpool as kgp

    return all(
        "pooled" in inspect.signature(function).parameters
        for function in (kgp.cache_features, kgp.fit_cached)
    )


def _maps(pooled=False):
    # The map cache is the only one where `pooled` is not an argument yet.
    return {"pooled": pooled} if pooled_supported() else {}


def calibrated_backbone(folder, path):
    """Writes a random MobileNetV2 whose BatchNorm statistics fit `folder`'s images.

    With `weights=None` and the builder's frozen BatchNorm (mean 0,
    variance 1), the random backbone's maps vanish (about 1e-11 at 96x96):
    float16 cannot hold them and no head learns from them. Setting each
    BatchNorm's statistics to one batch's, as section 4 does, gives maps of
    unit scale from the same random weights: features a head can learn
    from, and the float16 cache a pretrained backbone gets.
    """
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    dataset = folder_dataset(folder, shuffle=True, seed=0).take(16)
    images = np.concatenate([x for x, _ in dataset.as_numpy_iterator()])
    norms = [
        layer
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for norm in norms:
        norm.momentum = 0.0
    backbone(images / 127.5 - 1, training=True)
    backbone.save_weights(path)
    return path


def build_model(backbone_weights, weights=None):
    """The compiled classifier on the backbone in `backbone_weights`.

    `weights`, the whole model's, replace its head's initial ones.
    """
    import keras_globalpool as kgp

    keras.utils.set_random_seed(0)
    model = kgp.build_classifier(
        "MobileNetV2",
        CLASSES,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        weights=str(backbone_weights),
    )
    if weights is not None:
        model.set_weights(weights)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _load():
    return round(os.getloadavg()[0], 2)


# === 1. Peak memory, in a child process per run ===


def _status_mib():
    figures = {}
    with open("/proc/self/status") as status:
        for line in status:
            field, _, value = line.partition(":")
            if field in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                figures[field] = int(value.split()[0]) / 1024
    return figures


class _Sampler(threading.Thread):
    """Keeps the largest RssAnon and RssFile seen, every `interval` seconds."""

    def __init__(self, interval=0.05):
        super().__init__(daemon=True)
        self.interval, self.peaks = interval, {"RssAnon": 0.0, "RssFile": 0.0}
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def sample(self):
        figures = _status_mib()
        for field in self.peaks:
            self.peaks[field] = max(self.peaks[field], figures[field])

    def stop(self):
        self._stop_event.set()
        self.join()
        self.sample()


def memory_worker(mode, folder, epochs, cache_dir, backbone):
    """Trains one case and prints its memory figures as JSON (in a child)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras_globalpool as kgp

    model = build_model(backbone)
    built = _status_mib()
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    if mode == "stream":
        kgp.fit_cached(
            model,
            folder_dataset(folder),
            epochs=epochs,
            memory_budget=BUDGET,
            cache_dir=cache_dir,
            seed=0,
            verbose=0,
            **_maps(),
        )
    else:
        from keras_globalpool.cli.data import load_directory

        data = load_directory(folder)
        kgp.fit_cached(
            model,
            data.x,
            data.y,
            batch_size=BATCH_SIZE,
            epochs=epochs,
            memory_budget=IN_MEMORY_BUDGET,
            verbose=0,
            **_maps(),
        )
    seconds = time.perf_counter() - start
    sampler.stop()
    files = Path(cache_dir).rglob("*") if Path(cache_dir).exists() else ()
    cache_bytes = sum(p.stat().st_size for p in files if p.is_file())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "VmHWM": _status_mib()["VmHWM"],
                "RssAnon": sampler.peaks["RssAnon"],
                "RssFile": sampler.peaks["RssFile"],
                "built_rss": built["VmRSS"],
                "cache_mib": cache_bytes / 2**20,
            }
        )
    )


def _measure_memory(mode, folder, epochs, cache_dir, backbone, device):
    return run_child(
        "benchmarks.streaming_cache",
        ["--worker", mode, str(folder), str(epochs), str(cache_dir), str(backbone)],
        device,
    )


MODES = {
    "stream": f"stream to disk cache ({BUDGET})",
    "memory": "in memory (load_directory + arrays)",
}


def _growth_row(mode, small, large, smallest, largest):
    row = {
        "part": "1. memory",
        "case": f"{MODES[mode]}: growth {smallest} -> {largest}",
        "images": largest,
        "load (1 min)": _load(),
    }
    for figure in ("VmHWM", "RssAnon", "RssFile"):
        column = f"{figure} MiB" if figure == "VmHWM" else f"peak {figure} MiB"
        row[column] = large[figure] - small[figure]
    row["ratio"] = large["VmHWM"] / small["VmHWM"]
    if mode == "stream":
        row["target"] = f"< {GROWTH_FRACTION:.0%} or < {GROWTH_MIB} MiB"
        bounded = {
            figure: large[figure] - small[figure]
            < max(GROWTH_MIB, GROWTH_FRACTION * small[figure])
            for figure in ("VmHWM", "RssAnon")
        }
        row["met"] = (
            f"VmHWM {verdict(bounded['VmHWM'])}, RssAnon {verdict(bounded['RssAnon'])}"
        )
    return row


def memory_part(folders, epochs, work, backbone, device):
    rows, figures = [], {}
    for size, folder in sorted(folders.items()):
        for mode in MODES:
            cache_dir = Path(work) / f"memory-cache-{mode}-{size}"
            result = _measure_memory(mode, folder, epochs, cache_dir, backbone, device)
            shutil.rmtree(cache_dir, ignore_errors=True)
            row = {
                "part": "1. memory",
                "case": MODES[mode],
                "images": size,
                "load (1 min)": _load(),
            }
            if "failed" in result:
                print(f"  {size:6} {mode:7} failed: {result['failed']}", flush=True)
                rows.append({**row, "met": result["failed"]})
                continue
            figures[mode, size] = result
            row.update(
                {
                    "seconds": result["seconds"],
                    "VmHWM MiB": result["VmHWM"],
                    "peak RssAnon MiB": result["RssAnon"],
                    "peak RssFile MiB": result["RssFile"],
                }
            )
            rows.append(row)
            print(
                f"  {size:6} {mode:7} {result['seconds']:6.0f} s  VmHWM "
                f"{result['VmHWM']:6.0f}  RssAnon {result['RssAnon']:6.0f}  "
                f"RssFile {result['RssFile']:6.0f} MiB (built "
                f"{result['built_rss']:.0f}, cache {result['cache_mib']:.0f} MiB)"
                f"  load {_load()}",
                flush=True,
            )
    smallest, largest = min(folders), max(folders)
    for mode in MODES:
        if (mode, smallest) in figures and (mode, largest) in figures:
            rows.append(
                _growth_row(
                    mode,
                    figures[mode, smallest],
                    figures[mode, largest],
                    smallest,
                    largest,
                )
            )
    return rows, {f"{m} {s}": f for (m, s), f in figures.items()}


# === 2. Disk cache against RAM ===


class EpochTimes(keras.callbacks.Callback):
    """Keeps the seconds of each epoch."""

    def __init__(self):
        super().__init__()
        self.seconds, self._start = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _drop_page_cache(path):
    for shard in Path(path).rglob("*.npy"):
        fd = os.open(shard, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def speed_part(folder, size, epochs, rounds, work, backbone):
    import keras_globalpool as kgp
    from keras_globalpool.cached import CachedFeatures
    from keras_globalpool.cached.store import ShardedArray

    model = build_model(backbone)
    weights = model.get_weights()
    path = Path(work) / "speed-cache"
    start = time.perf_counter()
    kgp.cache_features(
        model,
        folder_dataset(folder),
        memory_budget=BUDGET,
        cache_dir=path,
        overwrite=True,
        **_maps(),
    )
    caching = time.perf_counter() - start
    ram = CachedFeatures.load(path, model=model)
    cache_mib = ram.maps.nbytes / 2**20
    print(
        f"  map cache of {size} images: {cache_mib:.0f} MiB {ram.maps.dtype}, "
        f"{caching:.0f} s",
        flush=True,
    )
    # The arrays in RAM, read through the CachedSequence as a disk cache is.
    sequence = CachedFeatures(
        ShardedArray([ram.maps], ram.maps.dtype, ram.maps.shape[1:]),
        ram.y,
        ram.sample_weight,
        ram.fingerprint,
    )
    names = ("disk", "RAM", "RAM via CachedSequence")
    times = {name: [] for name in names}
    order = list(names)
    rng = random.Random(0)
    for round_ in range(rounds):
        rng.shuffle(order)
        for name in order:
            if name == "disk":
                gc.collect()  # unmaps an earlier round's shards
                _drop_page_cache(path)
                cached = CachedFeatures.load(path, model=model, lazy=True)
            else:
                cached = ram if name == "RAM" else sequence
            model = build_model(backbone, weights)
            callback = EpochTimes()
            kgp.fit_cached(
                model,
                cached,
                batch_size=BATCH_SIZE,
                epochs=epochs,
                memory_budget=BUDGET,
                seed=round_,
                verbose=0,
                callbacks=[callback],
            )
            del cached
            times[name].append(callback.seconds)
            print(
                f"  round {round_} {name:23} first epoch {callback.seconds[0]:5.2f} s,"
                f" median after {statistics.median(callback.seconds[1:]):5.2f} s"
                f"  load {_load()}",
                flush=True,
            )
    medians = {
        name: statistics.median(s for run in runs for s in run[1:])
        for name, runs in times.items()
    }
    # Each round's ratio, disk over RAM, then their median.
    ratio = statistics.median(
        statistics.median(d[1:]) / statistics.median(r[1:])
        for d, r in zip(times["disk"], times["RAM"], strict=True)
    )
    rows = []
    for name in names:
        row = {
            "part": "2. epoch time",
            "case": f"{name}, median epoch 2..{epochs}",
            "images": size,
            "seconds": medians[name],
            "ratio": medians[name] / medians["RAM"],
            "load (1 min)": _load(),
        }
        if name == "disk":
            row["ratio"] = ratio
            row["target"] = f"<= {TARGET_DISK_RATIO}x RAM"
            row["met"] = verdict(ratio <= TARGET_DISK_RATIO)
        rows.append(row)
        cold = " (cold page cache)" if name == "disk" else ""
        rows.append(
            {
                "part": "2. epoch time",
                "case": f"{name}, first epoch{cold}",
                "images": size,
                "seconds": statistics.median(run[0] for run in times[name]),
            }
        )
    shutil.rmtree(path, ignore_errors=True)
    figures = {"cache_mib": cache_mib, "caching_s": caching, "epoch_s": times}
    return rows, figures


# === 3 and 4. Pooled against maps, and against model.fit ===


def _accuracy(model, test):
    import keras_globalpool as kgp

    predicted = kgp.predict_cached(model, test).argmax(axis=-1)
    return float(np.mean(predicted == np.asarray(test.y)))


def _head_weights(model):
    from keras_globalpool.pooler import POOLER_NAME

    start = model.layers.index(model.get_layer(POOLER_NAME))
    return [w for layer in model.layers[start:] for w in layer.get_weights()]


def training_part(folder, test_folder, size, epochs, rounds, backbone):
    import keras_globalpool as kgp

    model = build_model(backbone)
    weights = model.get_weights()
    test = kgp.cache_features(model, folder_dataset(test_folder), **_maps())

    def dataset():
        # A fresh one per run: each iteration of a dataset reshuffles, so
        # every run's first epoch must come from a first iteration.
        return folder_dataset(folder, shuffle=True, seed=0)

    def cached(pooled):
        def train(model):
            kgp.fit_cached(
                model, dataset(), epochs=epochs, shuffle=False, verbose=0, **pooled
            )

        return train

    methods = {
        # The dataset shuffles itself (`shuffle` is ignored for datasets).
        "model.fit": lambda model: model.fit(
            dataset(), epochs=epochs, shuffle=False, verbose=0
        ),
        "fit_cached, maps": cached(_maps(False)),
    }
    if pooled_supported():
        methods["fit_cached, pooled"] = cached({"pooled": True})
    results = {name: [] for name in methods}
    order = list(methods)
    rng = random.Random(0)
    for round_ in range(rounds):
        rng.shuffle(order)
        for name in order:
            keras.utils.set_random_seed(round_)
            model = build_model(backbone, weights)
            start = time.perf_counter()
            methods[name](model)
            seconds = time.perf_counter() - start
            accuracy = _accuracy(model, test)
            results[name].append((seconds, accuracy, _head_weights(model)))
            print(
                f"  round {round_} {name:18} {seconds:6.1f} s  accuracy "
                f"{accuracy:.3f}  load {_load()}",
                flush=True,
            )
    seconds = {n: statistics.median(r[0] for r in runs) for n, runs in results.items()}
    accuracy = {n: statistics.mean(r[1] for r in runs) for n, runs in results.items()}
    rows = []
    for name in methods:
        rows.append(
            {
                "part": "3-4. 20 epochs" if epochs == 20 else f"3-4. {epochs} epochs",
                "case": f"{name}, incl. caching" if "cached" in name else name,
                "images": size,
                "seconds": seconds[name],
                "accuracy": accuracy[name],
                "load (1 min)": _load(),
            }
        )
    figures = {"seconds": seconds, "accuracy": accuracy}
    if "fit_cached, pooled" in methods:
        speedup = statistics.median(
            m[0] / p[0]
            for m, p in zip(
                results["fit_cached, maps"], results["fit_cached, pooled"], strict=True
            )
        )
        gap = max(
            max(float(np.max(np.abs(a - b))) for a, b in zip(m[2], p[2], strict=True))
            / max(float(np.max(np.abs(a))) for a in m[2])
            for m, p in zip(
                results["fit_cached, maps"], results["fit_cached, pooled"], strict=True
            )
        )
        equal = (
            gap <= WEIGHTS_TOLERANCE
            and abs(accuracy["fit_cached, maps"] - accuracy["fit_cached, pooled"])
            <= ACCURACY_TOLERANCE
        )
        rows.append(
            {
                "part": "3. pooled vs maps",
                "case": "speed-up of pooled over maps (total); weights: largest "
                f"difference / largest weight = {gap:.2g}",
                "images": size,
                "ratio": speedup,
                "target": f"weights within {WEIGHTS_TOLERANCE:g}, accuracy within "
                f"{ACCURACY_TOLERANCE}",
                "met": verdict(equal),
            }
        )
        figures["weights_gap"] = gap
    else:
        rows.append(
            {
                "part": "3. pooled vs maps",
                "case": "not run: this library's fit_cached has no `pooled`",
                "met": "n/a",
            }
        )
    for name in methods:
        if name == "model.fit":
            continue
        speedup = statistics.median(
            f[0] / c[0]
            for f, c in zip(results["model.fit"], results[name], strict=True)
        )
        rows.append(
            {
                "part": "4. vs model.fit",
                "case": f"speed-up of {name} over model.fit",
                "images": size,
                "ratio": speedup,
                "target": f">= {TARGET_SPEEDUP}x",
                "met": verdict(speedup >= TARGET_SPEEDUP),
            }
        )
    return rows, figures


# === The section ===


def _options(args):
    preset = QUICK if getattr(args, "quick", False) else DEFAULTS
    return {
        key: value if (value := getattr(args, key, None)) is not None else default
        for key, default in preset.items()
    }


def run(args):
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("section 7 runs on tensorflow only")
    options = _options(args)
    device = getattr(args, "device", "cpu")
    data_dir = getattr(args, "data_dir", None)
    root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="kgp-s7-"))
    work = Path(tempfile.mkdtemp(prefix="kgp-s7-work-"))
    parts = {
        part
        for part in (getattr(args, "parts", None) or "1,2,3").split(",")
        if part.strip()
    }
    try:
        sizes = set(options["sizes"]) if "1" in parts else set()
        sizes |= {options["speed_size"], options["fit_size"]}
        folders, test_folder = make_data(root, sizes, options["test_size"])
        rows, figures = [], {}
        backbone = calibrated_backbone(
            folders[min(folders)], work / "backbone.weights.h5"
        )
        if "1" in parts:
            print("  1. peak memory, one process per run", flush=True)
            memory = {s: folders[s] for s in options["sizes"]}
            part_rows, figures["memory"] = memory_part(
                memory, options["memory_epochs"], work, backbone, device
            )
            rows += part_rows
        if "2" in parts:
            print("  2. epoch time, disk cache against RAM", flush=True)
            part_rows, figures["speed"] = speed_part(
                folders[options["speed_size"]],
                options["speed_size"],
                options["speed_epochs"],
                options["speed_rounds"],
                work,
                backbone,
            )
            rows += part_rows
        if "3" in parts:
            print("  3-4. pooled and map caches against model.fit", flush=True)
            part_rows, figures["training"] = training_part(
                folders[options["fit_size"]],
                test_folder,
                options["fit_size"],
                options["epochs"],
                getattr(args, "rounds", None) or 1,
                backbone,
            )
            rows += part_rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not data_dir:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "title": "7. Cached training from an image folder, streamed to a disk "
        f"cache (frozen MobileNetV2, {IMAGE_SIZE}x{IMAGE_SIZE}, batch "
        f"{BATCH_SIZE}, {CLASSES} classes)",
        "columns": COLUMNS,
        "rows": rows,
        "figures": figures,
        "options": {
            k: list(v) if isinstance(v, tuple) else v for k, v in options.items()
        },
        "pooled_supported": pooled_supported(),
        "targets": {
            "memory": f"streaming peak grows < {GROWTH_FRACTION:.0%} or < "
            f"{GROWTH_MIB} MiB from the smallest folder to the largest",
            "disk": f"disk epoch <= {TARGET_DISK_RATIO}x RAM epoch",
            "pooled": "pooled and map heads agree",
            "speed-up": f">= {TARGET_SPEEDUP}x model.fit at {DEFAULTS['epochs']} "
            "epochs, caching included",
        },
    }


def _sizes(text):
    sizes = tuple(int(s) for s in text.split(",") if s.strip())
    if not sizes or any(s < CLASSES or s % CLASSES for s in sizes):
        raise argparse.ArgumentTypeError(
            f"sizes must be multiples of {CLASSES}; got {text!r}"
        )
    return sizes


def _size(text):
    return _sizes(text)[0]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.streaming_cache",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--sizes", type=_sizes, help="part 1's folder sizes")
    parser.add_argument("--memory-epochs", type=int, help="part 1's epochs")
    parser.add_argument("--speed-size", type=_size, help="part 2's cache, in images")
    parser.add_argument("--speed-epochs", type=int, help="part 2's epochs per run")
    parser.add_argument("--speed-rounds", type=int, help="part 2's runs of each case")
    parser.add_argument("--fit-size", type=_size, help="parts 3-4's training images")
    parser.add_argument("--test-size", type=_size, help="parts 3-4's test images")
    parser.add_argument("--epochs", type=int, help="parts 3-4's epochs")
    parser.add_argument("--rounds", type=int, help="parts 3-4's runs of each method")
    parser.add_argument("--parts", default="1,2,3", help="some of 1,2,3 (3 is 3-4)")
    parser.add_argument(
        "--data-dir",
        help="generate the images here and keep them for the next run "
        "(default: a temporary folder, removed)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument(
        "--out",
        default="benchmarks/results-streaming.json",
        help="the JSON file to write (default: benchmarks/results-streaming.json)",
    )
    parser.set_defaults(device="cpu")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    from benchmarks import common

    common.hide_gpus()
    results = {"machine": common.machine("cpu"), "args": vars(args)}
    print(json.dumps(results["machine"], indent=1), flush=True)
    result = run(args)
    results["sections"] = {"7": result}
    results["machine"]["load_average_end"] = os.getloadavg()
    print(
        "\n" + common.format_table(result["title"], result["columns"], result["rows"])
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as out:
        json.dump(results, out, indent=1, default=str)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        mode, folder, epochs, cache_dir, backbone = sys.argv[2:7]
        memory_worker(mode, folder, int(epochs), cache_dir, backbone)
    else:
        sys.exit(main())
