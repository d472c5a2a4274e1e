"""The `keras-globalpool` command line, end to end on tiny settings."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_globalpool as kgp
from keras_globalpool.cli import compare
from keras_globalpool.cli.backbones import small_cnn
from keras_globalpool.cli.main import build_parser, main, settings_from
from keras_globalpool.cli.report import write_report
from keras_globalpool.cli.results import COLUMNS, HeadResult
from keras_globalpool.cli.verdict import summary

# The baseline head, then every registered pooling in registry order.
HEADS = ["flatten", "avg", "max", "mixed", "attention", "gem"]
# In this process, so that the tests' monkeypatches reach the training; the
# module's run, `tiny_run`, trains in worker processes, as on a CPU by default.
TINY = ["--quick", "--epochs", "1", "--max-samples", "120", "--workers", "1"]


def _run(argv):
    """Runs `main(argv)`, returning its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _folders(root):
    return [
        "--report-dir",
        str(root / "reports"),
        "--saved-models",
        str(root / "models"),
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    argv = ["compare", *TINY, "--workers", "2", "--run-name", "tiny", *_folders(root)]
    code, out, _ = _run(argv)
    report = json.loads((root / "reports" / "tiny" / "report.json").read_text())
    return code, out, root, report


class TestCompare:
    def test_succeeds_and_prints_every_head(self, tiny_run):
        code, out, _, _ = tiny_run
        assert code == 0
        for head in HEADS:
            assert f"│ {head}" in out
        assert "Best accuracy:" in out and "per trained parameter" in out

    def test_report_files(self, tiny_run):
        _, _, root, report = tiny_run
        folder = root / "reports" / "tiny"
        assert (folder / "comparison.png").read_bytes()[:4] == b"\x89PNG"
        assert (folder / "overlays.png").read_bytes()[:4] == b"\x89PNG"
        markdown = (folder / "report.md").read_text()
        assert "![heatmaps per head](overlays.png)" in markdown
        for head in HEADS:
            assert f"\n| {head} | " in markdown
        assert report["status"] == "complete"
        assert list(report["measurement"]) == list(COLUMNS[1:])
        assert report["summary"]["best_accuracy"] in HEADS

    def test_report_measures_every_head(self, tiny_run):
        report = tiny_run[3]
        assert [h["head"] for h in report["heads"]] == HEADS
        assert report["settings"]["train_samples"] == 96
        for head in report["heads"]:
            assert len(head["accuracies"]) == 1
            assert 0 <= head["accuracy_mean"] <= 1
            assert head["train_seconds_mean"] > 0 and head["latency_ms"] > 0
            assert head["peak_memory_mib"] > 100  # The TF runtime alone.
            assert head["total_params"] > head["head_params"] > 0
        by_head = {h["head"]: h for h in report["heads"]}
        # Flatten + Dense sizes its weights by the map; pooling heads don't.
        assert by_head["flatten"]["head_params"] > 10 * by_head["avg"]["head_params"]
        assert by_head["mixed"]["head_params"] > by_head["avg"]["head_params"]

    def test_trains_in_worker_processes(self, tiny_run):
        report = tiny_run[3]
        assert report["settings"]["workers"] == 2
        measured = report["measurement"]["train time (s)"]
        assert "2 trainings at a time, each in a process of its own" in measured

    def test_exports_load(self, tiny_run):
        root, report = tiny_run[2], tiny_run[3]
        images = np.random.default_rng(0).uniform(0, 255, (3, 24, 24, 1))
        for head in report["heads"]:
            paths = head["exports"]
            assert paths["saved_model"] == str(
                root / "models" / "tiny" / head["head"] / "1"
            )
            model = keras.models.load_model(paths["keras"], safe_mode=True)
            serving = tf.saved_model.load(paths["saved_model"]).signatures[
                "serving_default"
            ]
            outputs = serving(images=tf.constant(images, tf.float32))
            np.testing.assert_allclose(
                outputs["probabilities"].numpy(),
                model.predict(images, verbose=0),
                atol=1e-5,
            )

    def test_export_command(self, tiny_run, tmp_path):
        model_path = tiny_run[3]["heads"][1]["exports"]["keras"]
        code, out, _ = _run(["export", model_path, str(tmp_path / "served")])
        assert code == 0 and "served" in out
        assert (tmp_path / "served" / "1" / "saved_model.pb").is_file()
        assert _run(["export", model_path, str(tmp_path / "served")])[0] == 0
        assert (tmp_path / "served" / "2" / "saved_model.pb").is_file()
        served = str(tmp_path / "served")
        code, _, err = _run(["export", model_path, served, "--version", "1"])
        assert code == 2 and "already exists" in err


def test_frozen_backbone_trains_on_cached_features(tmp_path):
    weights = tmp_path / "mobilenet.weights.h5"
    keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    ).save_weights(weights)
    argv = ["compare", *TINY, "--max-samples", "60", "--backbone", "MobileNetV2"]
    argv += ["--weights", str(weights), "--image-size", "32", "--heads", "avg,gem"]
    argv += ["--run-name", "frozen", "--no-export", *_folders(tmp_path)]
    # The cached features live in this process: --workers does not apply.
    argv += ["--workers", "2"]
    assert _run(argv)[0] == 0
    report = json.loads((tmp_path / "reports" / "frozen" / "report.json").read_text())
    assert report["settings"]["workers"] == 1
    assert report["settings"]["image_shape"] == "32x32x3"
    assert "kgp.fit_cached" in report["settings"]["backbone_description"]
    assert report["settings"]["cache_seconds"] > 0
    for head in report["heads"]:
        # Only the head trains: the frozen backbone's weights are not counted.
        assert head["trainable_params"] == head["head_params"]


def test_ctrl_c_keeps_finished_heads(tmp_path, monkeypatch):
    run_head = compare._Comparison.run_head
    calls = []

    def interrupted_on_second_head(self, head, *args):
        calls.append(head)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_head(self, head, *args)

    monkeypatch.setattr(compare._Comparison, "run_head", interrupted_on_second_head)
    argv = ["compare", *TINY, "--max-samples", "60", "--heads", "flatten,avg,max"]
    argv += ["--run-name", "stopped", "--no-export", *_folders(tmp_path)]
    code, out, _ = _run(argv)
    assert code == 130 and "Interrupted" in out
    folder = tmp_path / "reports" / "stopped"
    report = json.loads((folder / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert [h["head"] for h in report["heads"]] == ["flatten"]
    assert "| flatten |" in (folder / "report.md").read_text()


def _write_pngs(root, sizes_by_class):
    for name, sizes in sizes_by_class.items():
        (root / name).mkdir(parents=True)
        for index, size in enumerate(sizes):
            Image.new("L", size).save(root / name / f"{index}.png")
    return root


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--heads", "avg,foo"], r"`heads` must be one or more of \{'flatten', 'avg'"),
        (
            ["--backbone", "ResNet5"],
            r"`backbone` must be one of \{'small-cnn', 'ConvNeXt",
        ),
        (["--weights", "imagenet"], "`weights` must be None for backbone='small-cnn'"),
        (["--data", "{tmp}/missing"], "no such folder"),
        (["--data", "{tmp}/one_class"], r"at least 2 class subfolders.*\['a'\]"),
        (["--data", "{tmp}/mixed_sizes"], r"2 different sizes .*8x8.*9x6"),
        (
            ["--data", "{tmp}/six.npz", "--max-samples", "5"],
            "`max_samples` must keep 2 images per class, 6 for 3 classes",
        ),
    ],
)
def test_bad_arguments_are_explained(tmp_path, argv, message):
    _write_pngs(tmp_path / "one_class", {"a": [(8, 8)] * 2})
    _write_pngs(tmp_path / "mixed_sizes", {"a": [(8, 8)] * 2, "b": [(6, 9)]})
    np.savez(tmp_path / "six.npz", x=np.zeros((6, 8, 8), "uint8"), y=np.arange(6) % 3)
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    code, _, err = _run(["compare", *argv, "--no-export"])
    assert code == 2
    assert err.startswith("keras-globalpool compare: error: ")
    assert re.search(message, err), err


def test_export_rejects_missing_model(tmp_path):
    code, _, err = _run(["export", str(tmp_path / "nope.keras"), str(tmp_path)])
    assert code == 2 and "must be an existing .keras file" in err


def test_python_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "keras_globalpool", "compare", "--heads", "pool"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 2
    assert "Received: heads=['pool']" in result.stderr


def test_quick_and_defaults():
    parse = build_parser().parse_args
    quick = settings_from(parse(["compare", "--quick", "--epochs", "5"]))
    assert (quick.epochs, quick.seeds, quick.max_samples) == (5, 1, 500)
    default = settings_from(parse(["compare"]))
    assert (default.epochs, default.seeds, default.max_samples) == (10, 3, None)
    assert default.heads == tuple(HEADS) and default.weights is None
    every = settings_from(parse(["compare", "--heads", "all"]))
    assert every.heads == ("flatten", *kgp.POOLINGS)
    transfer = settings_from(parse(["compare", "--backbone", "ResNet50"]))
    assert transfer.weights == "imagenet" and transfer.frozen
    scratch = settings_from(
        parse(["compare", "--backbone", "ResNet50", "--weights", "none"])
    )
    assert scratch.weights is None and not scratch.frozen


def _result(head, accuracies, trainable):
    return HeadResult(
        head, 10, trainable, trainable, accuracies, [1.0], 1, 1.0, 0.0, 1.0, {}
    )


def test_summary_names_the_winners():
    results = [
        _result("flatten", [0.70, 0.72], 100_000),
        _result("avg", [0.88, 0.90], 1_000),
        _result("max", [0.91, 0.95], 5_000),
    ]
    verdict = summary(results)
    assert verdict["best_accuracy"] == "max"
    assert verdict["best_accuracy_per_parameter"] == "avg"
    lines = "\n".join(verdict["lines"])
    # Paired by seed: avg is 3 and 5 points below max, flatten 21 and 23.
    assert "- avg vs max: -4.0 points (95% CI -16.7 to +8.7) over 2 seeds" in lines
    assert "- flatten vs max: -22.0 points" in lines
    assert "- avg vs flatten: +18.0 points" in lines
    against_best = verdict["paired"]["against_best"]
    assert [p["head"] for p in against_best] == ["avg", "flatten"]


def test_summary_with_one_seed_says_nothing_is_told_apart():
    lines = summary([_result("avg", [0.9], 10), _result("max", [0.8], 10)])["lines"]
    assert "With one seed, no head can be told apart from another." in lines
    assert not any("Paired" in line for line in lines)


@pytest.mark.parametrize(
    "shape, map_shape", [((24, 24, 1), (6, 6)), ((8, 8, 1), (4, 4))]
)
def test_small_cnn_keeps_a_map_to_pool(shape, map_shape):
    assert small_cnn(shape).output.shape[1:3] == map_shape


def test_report_without_matplotlib_says_how_to_get_the_charts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = {
        "run": "r",
        "status": "complete",
        "command": "keras-globalpool compare",
        "machine": {"description": "test"},
        "settings": {
            "heads": ["avg"],
            "data": "d",
            "train_samples": 1,
            "test_samples": 1,
            "image_shape": "8x8x1",
            "num_classes": 2,
            "backbone_description": "b",
            "training": "t",
        },
        "measurement": {},
    }
    folder = write_report(tmp_path, run, [_result("avg", [0.5], 10)])
    markdown = (folder / "report.md").read_text()
    assert "Charts skipped: " in markdown
    assert 'pip install "keras-globalpool[viz]"' in markdown
    assert not (folder / "comparison.png").exists()
    assert json.loads((folder / "report.json").read_text())["heads"][0]["head"] == "avg"
