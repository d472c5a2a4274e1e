"""Bad input and interruptions on the command line: one error line, exit 2 or 130.

Each test runs `main([...])` in this process on tiny data and checks the exit
code, what it printed to stderr, and the files on disk.
"""

import json
import urllib.error
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

import keras_globalpool as kgp
from keras_globalpool.cli import compare, training
from keras_globalpool.cli.interruption import is_interruption
from keras_globalpool.cli.main import build_parser, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One epoch and one seed; `--heads` adds up, so each test names its heads.
# In this process, so that the tests' monkeypatches reach the training.
TINY = ["--quick", "--epochs", "1", "--seeds", "1", "--workers", "1"]
TWO_HEADS = ["--heads", "avg,max"]


def _tiny_npz(path, classes=2, per_class=10, size=8):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (classes * per_class, size, size), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(classes * per_class) % classes)
    return path


def _folders(root, name="run"):
    return [
        "--run-name",
        name,
        "--report-dir",
        str(root / "reports"),
        "--saved-models",
        str(root / "models"),
    ]


def _error_line(err, command="compare"):
    """The single line a bad input prints; fails on anything else."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"keras-globalpool {command}: error: "), err
    return lines[0]


def _report(root, name="run"):
    return json.loads((root / "reports" / name / "report.json").read_text())


@pytest.fixture
def no_training(monkeypatch):
    """Makes any training fail the test: the error must come before it."""

    def fit(self, model, callbacks):
        raise AssertionError("training started before the bad input was found")

    monkeypatch.setattr(training.ImageTrainer, "fit", fit)


# === Finding 1: reusing a run name ===


def test_reused_run_name_is_refused_and_overwrite_replaces_cleanly(tmp_path, capsys):
    data = str(_tiny_npz(tmp_path / "d.npz"))
    argv = ["compare", *TINY, *TWO_HEADS, "--data", data, *_folders(tmp_path)]
    assert main(argv) == 0
    report = (tmp_path / "reports" / "run" / "report.json").read_bytes()
    capsys.readouterr()

    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert str(tmp_path / "reports" / "run") in line and "--overwrite" in line
    assert (tmp_path / "reports" / "run" / "report.json").read_bytes() == report
    assert sorted(p.name for p in (tmp_path / "models" / "run" / "avg").iterdir()) == [
        "1",
        "model.keras",
    ]

    # A smaller run replaces the whole run: no stale version nor stale head.
    overwrite = ["compare", *TINY, "--heads", "avg", "--data", data, "--overwrite"]
    assert main([*overwrite, *_folders(tmp_path)]) == 0
    models = tmp_path / "models" / "run"
    assert sorted(p.name for p in models.iterdir()) == ["avg"]
    assert sorted(p.name for p in (models / "avg").iterdir()) == ["1", "model.keras"]
    assert [h["head"] for h in _report(tmp_path)["heads"]] == ["avg"]


def test_overwrite_never_deletes_a_folder_compare_did_not_write(
    tmp_path, capsys, no_training
):
    mine = tmp_path / "reports" / "run"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    argv = ["compare", *TINY, *TWO_HEADS, "--data", str(_tiny_npz(tmp_path / "d.npz"))]
    assert main([*argv, "--overwrite", "--no-export", *_folders(tmp_path)]) == 2
    assert str(mine) in _error_line(capsys.readouterr().err)
    assert (mine / "thesis.tex").read_text() == "years of work"


# === Finding 2: Ctrl-C, bare or wrapped by TensorFlow ===


def _wrapped_by_message():
    return RuntimeError("Error while exporting: ... REPLACED BY KeyboardInterrupt")


def _wrapped_by_context():
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as interrupt:
        # As if raised while handling it: Python sets `__context__` then.
        error = RuntimeError("Error in user-defined function")
        error.__context__ = interrupt
        return error


def _wrapped_by_cause():
    error = ValueError("tracing failed")
    error.__cause__ = KeyboardInterrupt()
    return error


INTERRUPTIONS = {
    "bare": KeyboardInterrupt,
    "message": _wrapped_by_message,
    "context": _wrapped_by_context,
    "cause": _wrapped_by_cause,
}


@pytest.mark.parametrize("kind", sorted(INTERRUPTIONS))
def test_every_form_of_ctrl_c_is_an_interruption(kind):
    assert is_interruption(INTERRUPTIONS[kind]())
    assert not is_interruption(RuntimeError("Error in user-defined function"))


# A run end to end in each phase; the test above covers every form of Ctrl-C.
@pytest.mark.parametrize(
    ("during", "kind"), [("export", "message"), ("training", "context")]
)
def test_interruption_on_the_second_head_keeps_the_first(
    tmp_path, capsys, monkeypatch, during, kind
):
    calls = []
    if during == "export":
        original = compare.export_saved_model
        owner, name = compare, "export_saved_model"
    else:
        original = training.ImageTrainer.fit
        owner, name = training.ImageTrainer, "fit"

    def interrupted_on_second_call(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise INTERRUPTIONS[kind]()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted_on_second_call)
    argv = ["compare", *TINY, *TWO_HEADS, "--data", str(_tiny_npz(tmp_path / "d.npz"))]
    argv += _folders(tmp_path) + ([] if during == "export" else ["--no-export"])

    assert main(argv) == 130
    assert "Interrupted" in capsys.readouterr().out
    report = _report(tmp_path)
    assert report["status"] == "interrupted"
    assert [h["head"] for h in report["heads"]] == ["avg"]
    markdown = (tmp_path / "reports" / "run" / "report.md").read_text()
    assert "Status: interrupted (1 of 2 heads finished)" in markdown
    if during == "export":
        assert (tmp_path / "models" / "run" / "avg" / "1" / "saved_model.pb").exists()
        # The half-exported head leaves nothing behind.
        assert not (tmp_path / "models" / "run" / "max").exists()


# === Findings 3 and 4: output folders and run names, before any training ===


@pytest.mark.parametrize("option", ["--report-dir", "--saved-models"])
def test_unwritable_output_is_refused_before_training(
    tmp_path, capsys, no_training, option
):
    (tmp_path / "somefile").write_text("a file, not a folder")
    argv = ["compare", *TINY, *TWO_HEADS, "--data", str(_tiny_npz(tmp_path / "d.npz"))]
    argv += [*_folders(tmp_path), option, str(tmp_path / "somefile" / "out")]
    assert main(argv) == 2
    assert str(tmp_path / "somefile" / "out") in _error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "name", ["../../x", "a/b", "/abs", ".", "..", "", "a\0b", ".hidden", "-rf", "x y"]
)
def test_run_name_must_be_one_safe_folder_name(tmp_path, capsys, no_training, name):
    argv = ["compare", *TINY, *TWO_HEADS, "--data", str(_tiny_npz(tmp_path / "d.npz"))]
    argv += ["--report-dir", str(tmp_path / "a" / "r")]
    argv += ["--saved-models", str(tmp_path / "a" / "s"), f"--run-name={name}"]
    assert main(argv) == 2
    assert "run_name" in _error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


# === Finding 7 and other parse errors ===


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--learning-rate", "inf"], "--learning-rate"),
        (["--learning-rate=-inf"], "--learning-rate"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--learning-rate=-1e-3"], "--learning-rate"),
        (["--learning-rate", "fast"], "--learning-rate"),
        (["--epochs", "0"], "--epochs"),
        (["--heads", ","], "--heads"),
    ],
)
def test_bad_options_are_refused_at_parse_time_in_one_line(
    capsys, no_training, argv, option
):
    assert main(["compare", *argv]) == 2
    assert option in _error_line(capsys.readouterr().err)


def test_learning_rate_is_kept():
    args = build_parser().parse_args(["compare", "--learning-rate", "3e-4"])
    assert args.learning_rate == 3e-4


# === Finding 8: seeds never touch the split ===


def test_more_seeds_than_samples_per_class_is_fine(tmp_path):
    # 6 images of 3 classes: 2 per class, one for training and one for testing.
    data = str(_tiny_npz(tmp_path / "six.npz", classes=3, per_class=2))
    argv = ["compare", *TINY, "--heads", "avg", "--seeds", "3", "--data", data]
    assert main([*argv, "--no-export", *_folders(tmp_path)]) == 0
    (head,) = _report(tmp_path)["heads"]
    assert len(head["accuracies"]) == 3
    assert _report(tmp_path)["settings"]["train_samples"] == 3


# === Findings 6, 9 and 10: data sources ===


def _image_folder(root, classes=("a", "b"), per_class=4):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(root / name / f"{index}.png")
    return root


def test_hidden_folders_and_files_are_ignored(tmp_path):
    root = _image_folder(tmp_path / "images")
    (root / ".thumbnails").mkdir()
    Image.new("L", (8, 8)).save(root / ".thumbnails" / "t.png")
    (root / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    argv = ["compare", *TINY, "--heads", "avg", "--data", str(root), "--no-export"]
    assert main([*argv, *_folders(tmp_path)]) == 0
    settings = _report(tmp_path)["settings"]
    assert settings["class_names"] == ["a", "b"]
    assert settings["train_samples"] + settings["test_samples"] == 8


def test_an_existing_folder_wins_over_a_built_in_name(tmp_path, monkeypatch):
    _image_folder(tmp_path / "digits", classes=("cat", "dog"))
    monkeypatch.chdir(tmp_path)
    argv = ["compare", *TINY, "--heads", "avg", "--data", "digits", "--no-export"]
    assert main([*argv, *_folders(tmp_path)]) == 0
    assert _report(tmp_path)["settings"]["class_names"] == ["cat", "dog"]


def _corrupt_png(root):
    path = _image_folder(root / "images") / "a" / "cat.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root / "images", "cat.png"


def _truncated_png(root):
    path = _image_folder(root / "images") / "b" / "half.png"
    whole = (root / "images" / "b" / "0.png").read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return root / "images", "half.png"


def _truncated_npz(root):
    whole = _tiny_npz(root / "whole.npz").read_bytes()
    (root / "cut.npz").write_bytes(whole[: len(whole) // 2])
    return root / "cut.npz", "cut.npz"


def _scalar_labels_npz(root):
    np.savez(root / "scalar.npz", x=np.zeros((4, 8, 8), "uint8"), y=np.array(3))
    return root / "scalar.npz", "scalar.npz"


@pytest.mark.parametrize(
    "make", [_corrupt_png, _truncated_png, _truncated_npz, _scalar_labels_npz]
)
def test_broken_data_is_named_in_one_line(tmp_path, capsys, no_training, make):
    source, bad_name = make(tmp_path)
    argv = ["compare", *TINY, *TWO_HEADS, "--data", str(source), "--no-export"]
    assert main([*argv, *_folders(tmp_path)]) == 2
    assert bad_name in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "reports").exists()


def test_offline_imagenet_download_is_explained(tmp_path, capsys, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    # No cached weights, and the download fails as it does offline.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    argv = ["compare", *TINY, *TWO_HEADS, "--data", str(_tiny_npz(tmp_path / "d.npz"))]
    argv += ["--backbone", "MobileNetV2", "--image-size", "32", "--no-export"]
    assert main([*argv, *_folders(tmp_path)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "download" in line and "--weights none" in line
    assert "Name or service not known" in line


@pytest.mark.parametrize(
    "command, phrases",
    [
        ("compare", ["--overwrite", "an existing path wins"]),
        ("explain", ["--overwrite", "never overwritten"]),
        ("export", ["with --quantize int8 only", "tf_saved_model only"]),
    ],
)
def test_help_documents_the_choices(capsys, command, phrases):
    assert main([command, "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for phrase in phrases:
        assert phrase in help_text


# === Findings 5 and 6: explain ===


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = kgp.GlobalAveragePooling(name="pooler")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    path = tmp_path_factory.mktemp("model") / "m.keras"
    model.save(path)
    return path


def _images(root, names):
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 256, (8, 8, 3)).astype("uint8")
        keras.utils.save_img(root / name, pixels)
    return [str(root / name) for name in names]


def test_explain_outputs_never_collide(tmp_path, capsys, model_path):
    names = ["a.png", "a.jpg", "a-1.png", "A.png"]
    argv = ["explain", str(model_path), *_images(tmp_path, names)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4
    assert len({name.casefold() for name in printed}) == 4
    # An image whose own name is free keeps it.
    assert printed[2] == str(tmp_path / "out" / "a-1_cam.png")
    for path in printed:
        with open(path, "rb") as png:
            assert png.read(8) == PNG_SIGNATURE


def test_explain_refuses_existing_outputs_unless_overwrite(
    tmp_path, capsys, model_path
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_cam.png").write_bytes(b"the user's own file")
    argv = ["explain", str(model_path), *_images(tmp_path, ["a.png", "b.png"])]
    assert main([*argv, "--out", str(out)]) == 2
    line = _error_line(capsys.readouterr().err, "explain")
    assert str(out / "a_cam.png") in line and "--overwrite" in line
    assert (out / "a_cam.png").read_bytes() == b"the user's own file"
    assert not (out / "b_cam.png").exists()

    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert (out / "a_cam.png").read_bytes()[:8] == PNG_SIGNATURE


def test_explain_never_overwrites_an_input_image(tmp_path, capsys, model_path):
    out = tmp_path / "out"
    out.mkdir()
    (target,) = _images(out, ["a_cam.png"])
    before = (out / "a_cam.png").read_bytes()
    argv = ["explain", str(model_path), *_images(tmp_path, ["a.png"]), target]
    assert main([*argv, "--out", str(out), "--overwrite"]) == 2
    assert "a_cam.png" in _error_line(capsys.readouterr().err, "explain")
    assert (out / "a_cam.png").read_bytes() == before


def _truncated_image(root):
    _images(root, ["whole.png"])
    whole = (root / "whole.png").read_bytes()
    (root / "half.png").write_bytes(whole[: len(whole) // 2])
    return "half.png"


def _text_file(root):
    (root / "notes.png").write_text("not an image")
    return "notes.png"


def _missing_file(root):
    return "missing.png"


@pytest.mark.parametrize("make", [_missing_file, _text_file, _truncated_image])
def test_explain_names_a_bad_image(tmp_path, capsys, model_path, make):
    bad = make(tmp_path)
    good = _images(tmp_path, ["good.png"])
    argv = ["explain", str(model_path), *good, str(tmp_path / bad)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert bad in _error_line(capsys.readouterr().err, "explain")
    assert not (tmp_path / "out" / "good_cam.png").exists()


def test_explain_names_a_broken_model(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "broken.keras", "w") as archive:
        archive.writestr("config.json", "{not json")
    argv = ["explain", str(tmp_path / "broken.keras"), *_images(tmp_path, ["a.png"])]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "broken.keras" in _error_line(capsys.readouterr().err, "explain")
