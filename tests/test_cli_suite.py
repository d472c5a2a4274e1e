"""`compare`'s task suite, claims, paired report, and parallel trainings."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from rich.console import Console
from rich.progress import Progress

from keras_globalpool.cli.claims import CLAIM_VERDICTS, CLAIMS, Claim, judge
from keras_globalpool.cli.main import main
from keras_globalpool.cli.report import write_report
from keras_globalpool.cli.results import HeadResult
from keras_globalpool.cli.runs import RunContext
from keras_globalpool.cli.settings import CompareSettings
from keras_globalpool.cli.splits import load_splits
from keras_globalpool.cli.workers import InlineRunner, ProcessRunner, default_workers
from keras_globalpool.viz.overlay_grid import heatmap_grid_figure


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _folders(root):
    return ["--report-dir", str(root / "reports"), "--saved-models", str(root / "m")]


class TestClaims:
    claim = Claim("avg for presence", (("presence", ("avg",), ("max", "lse")),))

    @pytest.mark.parametrize(
        "max_scores, verdict",
        [
            ([0.80, 0.81, 0.79], "supports"),  # 10 points below avg every seed.
            ([0.95, 0.96, 0.94], "contradicts"),
            ([0.85, 0.95, 0.90], "cannot decide"),
        ],
    )
    def test_verdict_follows_the_paired_intervals(self, max_scores, verdict):
        scores = {
            "presence": {
                "avg": [0.90, 0.91, 0.89],
                "max": max_scores,
                "lse": [0.70, 0.71, 0.69],
            }
        }
        judged = judge(self.claim, scores)
        assert judged["verdict"] == verdict
        assert [(t, d.head, d.reference) for t, d in judged["evidence"]] == [
            ("presence", "avg", "max"),
            ("presence", "avg", "lse"),
        ]

    def test_any_worse_pair_contradicts(self):
        scores = {"presence": {"avg": [0.9, 0.91], "max": [0.8, 0.8], "lse": [1, 1]}}
        assert judge(self.claim, scores)["verdict"] == "contradicts"

    def test_heads_not_trained_are_not_measured(self):
        scores = {"presence": {"avg": [0.9, 0.91]}, "bag": {"max": [0.5, 0.6]}}
        judged = judge(self.claim, scores)
        assert judged == {
            "advice": "avg for presence",
            "verdict": "not measured",
            "evidence": [],
        }

    def test_every_claim_names_tasks_and_heads_that_exist(self):
        from keras_globalpool.cli.data.tasks import TASKS
        from keras_globalpool.cli.settings import HEADS

        for claim in CLAIMS:
            for task, winners, losers in claim.tests:
                assert task in TASKS
                assert set(winners + losers) <= set(TASKS[task].heads) <= set(HEADS)


def test_suite_end_to_end(tmp_path):
    argv = ["compare", "--task", "suite", "--seeds", "2", "--epochs", "1"]
    argv += ["--max-samples", "60", "--heads", "avg,max", "--no-export"]
    argv += ["--workers", "1", "--run-name", "s", *_folders(tmp_path)]
    code, out, err = _run(argv)
    assert code == 0, err
    folder = tmp_path / "reports" / "s"
    report = json.loads((folder / "report.json").read_text())
    assert report["status"] == "complete"
    assert [c["advice"] for c in report["claims"]] == [c.advice for c in CLAIMS]
    verdicts = {c["advice"]: c["verdict"] for c in report["claims"]}
    assert set(verdicts.values()) <= set(CLAIM_VERDICTS)
    # Only avg and max trained: the claims about flatten, mixed and the
    # attention heads have nothing to rest on; the two others do.
    assert [v == "not measured" for v in verdicts.values()] == [
        True,
        False,
        False,
        True,
        True,
    ]
    presence = report["claims"][1]["evidence"]
    assert [(e["task"], e["head"], e["reference"]) for e in presence] == [
        ("presence", "avg", "max")
    ]
    for task in ("invariance", "presence", "small-mark", "bag"):
        task_report = json.loads((folder / task / "report.json").read_text())
        assert [h["head"] for h in task_report["heads"]] == ["avg", "max"]
        assert task_report["settings"]["task"] == task
        assert (folder / task / "paired.png").is_file()
    markdown = (folder / "report.md").read_text()
    assert "| advice of the design notes | our measurements |" in markdown
    assert "[bag/report.md](bag/report.md)" in markdown
    assert "our measurements" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "nope"], "argument --task: invalid choice: 'nope'"),
        (["--task", "suite", "--seeds", "1"], "An interval needs at least 2 seeds"),
        (["--task", "presence", "--data", "digits"], "`task` brings its own data"),
        (
            ["--task", "bag", "--backbone", "MobileNetV2", "--weights", "none"],
            "`backbone` must be 'small-cnn' and `image_size` None",
        ),
    ],
)
def test_bad_task_arguments_are_explained(tmp_path, argv, message):
    code, _, err = _run(["compare", *argv, "--no-export", *_folders(tmp_path)])
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "reports").exists()


def _result(head, accuracies):
    return HeadResult(head, 10, 20, 20, accuracies, [1.0], 1, 1.0, 0.0, 1.0, {})


def test_report_draws_the_paired_differences(tmp_path):
    run = {
        "run": "r",
        "status": "complete",
        "command": "keras-globalpool compare",
        "machine": {"description": "test"},
        "settings": {
            "heads": ["avg", "max"],
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
    results = [_result("avg", [0.9, 0.92, 0.91]), _result("max", [0.8, 0.8, 0.82])]
    folder = write_report(tmp_path, run, results)
    assert (folder / "paired.png").is_file()
    markdown = (folder / "report.md").read_text()
    assert "![paired differences from the best head](paired.png)" in markdown
    assert "- max vs avg: -10.3 points" in markdown
    paired = json.loads((folder / "report.json").read_text())["summary"]["paired"]
    assert paired["against_best"][0]["verdict"] == "worse"


def test_heatmap_grid_captions_each_image():
    images = np.zeros((2, 8, 8, 1), "uint8")
    maps = np.zeros((2, 8, 8), "float32")
    captions = {"avg": ["true 1, predicted 1", "true 2, predicted 7"]}
    figure = heatmap_grid_figure(
        {"avg": (maps, "CAM"), "max": (maps, "CAM")}, images, captions=captions
    )
    labels = [axes.get_xlabel() for axes in figure.axes[:4]]
    assert labels == ["true 1, predicted 1", "true 2, predicted 7", "", ""]


def test_default_workers(monkeypatch):
    monkeypatch.setattr("keras_globalpool.cli.workers.cpu_cores", lambda: 8)
    settings = CompareSettings(heads=("avg", "max"), seeds=3)
    assert default_workers(settings, has_gpu=False) == 6
    assert default_workers(settings, has_gpu=True) == 1
    frozen = dataclasses.replace(settings, backbone="MobileNetV2", weights="x.h5")
    assert default_workers(frozen, has_gpu=False) == 1


def test_worker_processes_train_the_same_models_as_this_one():
    settings = CompareSettings(
        heads=("avg", "max"), epochs=2, seeds=2, max_samples=100, export=False
    )
    train, test = load_splits(settings)
    context = RunContext(settings, train, test)
    runs = [(head, seed) for head in settings.heads for seed in range(2)]
    with Progress(console=Console(quiet=True)) as progress:
        task = progress.add_task("epochs")
        with InlineRunner(context, progress, task) as runner:
            inline = [runner.result(h, s, "") for h, s in runs]
        with ProcessRunner(context, runs, 2, progress, task) as runner:
            parallel = [runner.result(h, s, "") for h, s in runs]
        assert progress.tasks[0].completed == len(runs) * settings.epochs
    assert [r.accuracy for r in parallel] == [r.accuracy for r in inline]
    for ours, theirs in zip(inline, parallel, strict=True):
        # Only each head's first seed comes back with its model.
        assert (theirs.model is None) == (ours.seed > 0)
        if theirs.model is not None:
            for a, b in zip(ours.model.weights, theirs.model.weights, strict=True):
                np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_suite_trains_bags_with_their_own_encoder():
    from keras_globalpool.cli.data.tasks import TASKS
    from keras_globalpool.cli.suite import task_settings

    settings = CompareSettings(
        backbone="MobileNetV2", weights="imagenet", image_size=96, run_name="r"
    )
    bag = task_settings(settings, "bag")
    assert (bag.backbone, bag.weights, bag.image_size) == ("small-cnn", None, None)
    presence = task_settings(settings, "presence")
    assert (presence.backbone, presence.image_size) == ("MobileNetV2", 96)
    assert presence.heads == TASKS["presence"].heads
    assert (presence.run_name, presence.report_dir) == ("presence", "reports/r")


_ORPHAN_SCRIPT = """
import multiprocessing, os, time
from keras_globalpool.cli.workers import _exit_with

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(
        target=_exit_with, args=(os.getpid(),)
    )
    child.start()
    print(child.pid, flush=True)
    time.sleep(120)
"""


def _running(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            state = next(line for line in status if line.startswith("State:"))
            return "\tZ" not in state
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_a_worker_ends_when_compare_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    assert _running(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(child)
