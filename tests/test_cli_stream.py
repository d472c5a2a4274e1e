"""`compare --data DIR` streams the folder: no full load, and a feature cache on disk.

Each `compare` here runs `main([...])` in this process on a few tiny images,
one head, one seed and one epoch.
"""

import contextlib
import io
import json
import re
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from keras_globalpool.cli import training, workers
from keras_globalpool.cli.data import directory, sources, stream
from keras_globalpool.cli.data import load_directory as loaded_directory
from keras_globalpool.cli.data.stream import ImageBatches, stream_directory
from keras_globalpool.cli.data.transforms import to_rgb
from keras_globalpool.cli.main import main

TINY = ["--epochs", "1", "--seeds", "1", "--workers", "1", "--no-export"]
FROZEN = ["--backbone", "MobileNetV2", "--image-size", "32", "--heads", "avg"]


def _run(argv):
    """Runs `main(argv)`, returning its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("keras-globalpool compare: error: "), err
    return lines[0]


def _folders(root, name="run"):
    return [
        "--run-name",
        name,
        "--report-dir",
        str(root / "reports"),
        "--saved-models",
        str(root / "models"),
    ]


def _report(root, name="run"):
    return json.loads((root / "reports" / name / "report.json").read_text())


def _image_folder(
    root, per_class=6, mode="RGB", sizes=((8, 8),), suffixes=(".png", ".jpg")
):
    """Class folders `a`, `b` of random `mode` images, cycling sizes and suffixes."""
    rng = np.random.default_rng(0)
    bands = {"L": 1, "RGB": 3, "RGBA": 4, "I;16": 1, "P": 1}[mode]
    index = 0
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for _ in range(per_class):
            width, height = sizes[index % len(sizes)]
            suffix = suffixes[index % len(suffixes)]
            if mode == "I;16":
                pixels = rng.integers(0, 65536, (height, width), dtype=np.uint16)
                image = Image.fromarray(pixels)  # mode I;16
                suffix = ".png"
            else:
                shape = (height, width, bands) if bands > 1 else (height, width)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                image = Image.fromarray(pixels, "L" if mode == "P" else mode)
                if mode == "P":
                    image = image.convert("P")
                if suffix == ".jpg" and mode not in ("L", "RGB"):
                    suffix = ".png"
            image.save(root / name / f"{index}{suffix}")
            index += 1
    return root


# === The stream equals load_directory ===


@pytest.mark.parametrize(
    "mode, sizes, image_size",
    [
        ("L", ((8, 8),), None),
        ("RGB", ((8, 8),), None),
        ("RGBA", ((8, 8),), None),
        ("P", ((8, 8),), None),
        ("I;16", ((8, 8),), None),
        ("RGB", ((9, 6), (5, 7), (8, 8)), (7, 5)),
        ("L", ((9, 6), (13, 11)), (6, 10)),
    ],
)
def test_stream_equals_load_directory(tmp_path, mode, sizes, image_size):
    root = _image_folder(tmp_path / "images", per_class=5, mode=mode, sizes=sizes)
    loaded = loaded_directory(root, image_size=image_size)
    streamed = stream_directory(root, image_size=image_size)
    x = np.concatenate(list(streamed.batches(3)))
    assert x.dtype == loaded.x.dtype == np.uint8
    np.testing.assert_array_equal(x, loaded.x)
    assert streamed.image_shape == loaded.image_shape
    np.testing.assert_array_equal(streamed.y, loaded.y)
    assert streamed.class_names == loaded.class_names
    assert streamed.description == loaded.description
    # The RGB transform, and a split, stream the same pixels as in memory.
    rgb, rgb_stream = to_rgb(loaded), to_rgb(streamed)
    assert rgb_stream.image_shape == rgb.image_shape == (*rgb.x.shape[1:3], 3)
    np.testing.assert_array_equal(rgb_stream.read(), rgb.x)
    assert rgb_stream.description == rgb.description
    rows = np.array([7, 0, 3])
    np.testing.assert_array_equal(rgb_stream.take(rows).read(), rgb.x[rows])
    np.testing.assert_array_equal(rgb_stream.take(rows).y, rgb.y[rows])


def test_shuffled_batches_hold_each_image_once_per_epoch(tmp_path):
    root = _image_folder(tmp_path / "images", per_class=5)
    loaded = loaded_directory(root)
    batches = ImageBatches(stream_directory(root), batch_size=3, seed=1)
    orders = []
    for _ in range(2):
        seen = [batches[index] for index in range(len(batches))]
        x = np.concatenate([images for images, _ in seen])
        y = np.concatenate([labels for _, labels in seen])
        # Each row is one of the folder's images, with its own label.
        order = [
            int(np.flatnonzero((loaded.x == row).all(axis=(1, 2, 3)))[0]) for row in x
        ]
        assert sorted(order) == list(range(10))
        np.testing.assert_array_equal(y, loaded.y[order])
        orders.append(order)
        batches.on_epoch_end()
    assert orders[0] != list(range(10)) and orders[0] != orders[1]


def test_worker_processes_get_the_file_list_not_the_pixels(tmp_path):
    data = stream_directory(_image_folder(tmp_path / "images", per_class=2))
    shared = workers._to_file(data, tmp_path / "train.npy")
    assert not (tmp_path / "train.npy").exists()
    restored = workers._from_file(*shared)
    assert restored.files == data.files and restored.image_shape == data.image_shape
    np.testing.assert_array_equal(restored.y, data.y)


# === compare --data DIR ===


@pytest.fixture
def no_full_load(monkeypatch):
    """Fails the test on any full load, and records the most images decoded at once."""

    def refuse(*args, **kwargs):
        raise AssertionError("load_directory read the whole folder into memory")

    for module in (directory, sources):
        monkeypatch.setattr(module, "load_directory", refuse)
    read, largest = stream.FileImageDataset.read, [0]

    def recording_read(self, start=0, stop=None):
        images = read(self, start, stop)
        largest[0] = max(largest[0], len(images))
        return images

    monkeypatch.setattr(stream.FileImageDataset, "read", recording_read)
    monkeypatch.setattr(stream, "READ_BATCH", 5)
    return largest


def test_compare_data_dir_streams(tmp_path, no_full_load):
    root = _image_folder(tmp_path / "images", per_class=10)
    argv = ["compare", *TINY, "--heads", "avg", "--batch-size", "4"]
    code, out, err = _run([*argv, "--data", str(root), *_folders(tmp_path)])
    assert code == 0, err
    settings = _report(tmp_path)["settings"]
    assert settings["train_samples"] + settings["test_samples"] == 20
    assert settings["image_shape"] == "8x8x3"
    # Batches of 4 to train, 5 to check, 4 overlay images: never all 20.
    assert 0 < no_full_load[0] <= 5


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """Two weights files of the same MobileNetV2 at 32x32, from different seeds."""
    folder = tmp_path_factory.mktemp("weights")
    paths = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = keras.applications.MobileNetV2(
            include_top=False, weights=None, input_shape=(32, 32, 3)
        )
        paths.append(folder / f"mobilenet-{seed}.weights.h5")
        model.save_weights(paths[-1])
    keras.backend.clear_session()
    return paths


def _count_backbone_passes(monkeypatch):
    """Records the images the backbone runs over in each `cache_features` call."""
    cache_features, images = training.cache_features, []

    def counting(model, x, *args, **kwargs):
        images.append(len(x.dataset.y) if isinstance(x, ImageBatches) else len(x))
        return cache_features(model, x, *args, **kwargs)

    monkeypatch.setattr(training, "cache_features", counting)
    return images


@pytest.fixture
def backbone_passes(monkeypatch):
    return _count_backbone_passes(monkeypatch)


def _cache_state(cache_dir):
    """Every file under `cache_dir` with its bytes and modification time."""
    return {
        str(path.relative_to(cache_dir)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(cache_dir.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def first_cached_run(tmp_path_factory, weights_files):
    """A frozen MobileNetV2 run on a folder that fills `--cache-dir`."""
    root = tmp_path_factory.mktemp("cached")
    images = _image_folder(root / "images", per_class=6)
    argv = ["compare", *TINY, *FROZEN, "--data", str(images)]
    argv += ["--cache-dir", str(root / "cache")]
    with pytest.MonkeyPatch.context() as monkeypatch:
        passes = _count_backbone_passes(monkeypatch)
        code, out, err = _run(
            [*argv, "--weights", str(weights_files[0]), *_folders(root)]
        )
    assert code == 0, err
    return argv, root, passes, out


def test_first_run_caches_each_split_once(first_cached_run):
    argv, root, passes, out = first_cached_run
    assert sorted(passes) == [2, 10]  # test and train, once each
    assert re.search(r"caching features.* 12/12", out), out
    assert _report(root)["settings"]["cache_seconds"] > 0
    manifests = [p for p in (root / "cache").rglob("manifest.json")]
    assert sorted(p.parent.name.split("-")[0] for p in manifests) == ["test", "train"]


def test_cache_dir_is_reused_by_a_second_run(
    tmp_path, first_cached_run, weights_files, backbone_passes
):
    argv, root, _, _ = first_cached_run
    state = _cache_state(root / "cache")
    argv = [*argv, "--weights", str(weights_files[0])]
    code, _, err = _run([*argv, *_folders(tmp_path)])
    assert code == 0, err
    assert backbone_passes == []  # the backbone did not run again
    report = _report(tmp_path)
    assert report["settings"]["cache_reused"] is True
    assert "reused" in report["settings"]["backbone_description"]
    first = _report(root)
    assert report["heads"][0]["accuracies"] == first["heads"][0]["accuracies"]
    assert _cache_state(root / "cache") == state


def test_a_cache_of_another_backbone_is_refused(
    tmp_path, first_cached_run, weights_files, backbone_passes
):
    argv, root, _, _ = first_cached_run
    cache_dir = tmp_path / "cache"
    shutil.copytree(root / "cache", cache_dir)  # copy2 keeps the mtimes
    argv = [*argv[:-1], str(cache_dir), "--weights", str(weights_files[1])]
    state = _cache_state(cache_dir)
    code, _, err = _run([*argv, *_folders(tmp_path, "other")])
    assert code == 2
    line = _error_line(err)
    assert "another backbone" in line and "--overwrite-cache" in line
    assert _cache_state(cache_dir) == state  # never overwritten without the flag
    assert not (tmp_path / "reports").exists() and backbone_passes == []

    code, _, err = _run([*argv, "--overwrite-cache", *_folders(tmp_path)])
    assert code == 0, err
    assert sorted(backbone_passes) == [2, 10]
    assert _cache_state(cache_dir).keys() == state.keys()
    assert _cache_state(cache_dir) != state
    assert _report(tmp_path)["settings"]["cache_reused"] is False


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--memory-budget", "lots"],
            "--memory-budget: .*Received: memory_budget='lots'",
        ),
        (
            ["--memory-budget", "0MB"],
            "--memory-budget: .*Received: memory_budget='0MB'",
        ),
        (["--overwrite-cache"], "`overwrite_cache` .*needs `cache_dir`"),
        (["--cache-dir", "{tmp}/cache"], "`cache_dir` .*frozen backbone"),
    ],
)
def test_bad_cache_options_are_one_line(tmp_path, extra, message):
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    code, _, err = _run(
        ["compare", *TINY, "--data", "digits", *extra, *_folders(tmp_path)]
    )
    assert code == 2
    assert re.search(message, _error_line(err)), err
    assert not (tmp_path / "reports").exists() and not (tmp_path / "cache").exists()
