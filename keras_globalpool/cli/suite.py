"""`compare --task suite`: every task of the suite, then the verdict on each claim.

The suite's run folder holds one `compare` run per task (`<task>/`, each
with its own report, charts and models) and `report.md` / `report.json`,
the table of the design notes' claims as measured.
"""

import dataclasses
import json
import pathlib

from keras_globalpool.cli.backbones import SMALL_CNN
from keras_globalpool.cli.claims import CLAIMS, judge
from keras_globalpool.cli.compare import run_compare
from keras_globalpool.cli.data.tasks import TASKS
from keras_globalpool.cli.outputs import REPORT_FILE, prepare_run_folders
from keras_globalpool.cli.paired import check_seeds, mean_interval
from keras_globalpool.cli.run_description import machine

SUITE = "suite"


def task_settings(settings, task, heads=None):
    """The settings of one task's run inside the suite's run folder.

    The bag task always trains its own instance encoder on 8x8 digits, so
    a `--backbone`, `--weights` or `--image-size` applies to the image tasks.

    Args:
        settings: `CompareSettings` of the suite.
        task: string. A name in `TASKS`.
        heads: optional tuple of heads; defaults to the task's own.

    Returns:
        `CompareSettings`.
    """
    if task == "bag":
        settings = dataclasses.replace(
            settings, backbone=SMALL_CNN, weights=None, image_size=None
        )
    return dataclasses.replace(
        settings,
        task=task,
        heads=tuple(heads or TASKS[task].heads),
        run_name=task,
        report_dir=str(pathlib.Path(settings.report_dir) / settings.run_name),
        saved_models=str(pathlib.Path(settings.saved_models) / settings.run_name),
        overwrite=False,
    )


@dataclasses.dataclass
class SuiteOutcome:
    """What `run_suite` returns: the claims, each task's outcome, the folder."""

    claims: list
    outcomes: dict
    report_dir: pathlib.Path
    interrupted: bool


def _claims(outcomes):
    scores = {
        task: {r.head: r.accuracies for r in outcome.results}
        for task, outcome in outcomes.items()
    }
    return [judge(claim, scores) for claim in CLAIMS]


def _evidence(evidence):
    return "; ".join(
        f"{task}: {d.head} vs {d.reference} {100 * d.mean:+.1f} "
        f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}] {d.verdict}"
        for task, d in evidence
    )


def claims_table(claims):
    """The claims and their verdicts as a Markdown table."""
    lines = [
        "| advice of the design notes | our measurements | evidence: paired "
        "difference in points [95% CI] |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {c['advice']} | **{c['verdict']}** | {_evidence(c['evidence'])} |"
        for c in claims
    ]
    return "\n".join(lines)


def _ranking(outcome):
    rows = ["| head | accuracy, mean [95% CI, within 0-100%] |", "| --- | ---: |"]
    for r in sorted(outcome.results, key=lambda r: -r.accuracy_mean):
        mean, low, high = mean_interval(r.accuracies)
        low, high = max(low, 0.0), min(high, 1.0)
        rows.append(f"| {r.head} | {mean:.1%} [{low:.1%}, {high:.1%}] |")
    return rows


def _markdown(settings, command, claims, outcomes):
    lines = [
        f"# keras-globalpool compare --task suite: {settings.run_name}",
        "",
        f"- Command: `{command}`",
        f"- Training: {settings.epochs} epochs, batch size {settings.batch_size}, "
        f"Adam at {settings.learning_rate:g}, seeds 0 to {settings.seeds - 1}; "
        "every head of a task trains on the same split, and seed i gives each "
        "the same initialization and batch order",
        f"- Machine: {machine()['description']}",
        "",
        "## The design notes' advice, as measured",
        "",
        claims_table(claims),
        "",
        "A verdict rests on paired differences (head minus head, seed by seed) "
        "and their Student-t intervals: **supports** when every difference it "
        "names is above 0, **contradicts** when any is below 0, **cannot "
        "decide** otherwise.",
    ]
    for task, outcome in outcomes.items():
        lines += [
            "",
            f"## {task}",
            "",
            f"- Claim: {TASKS[task].claim}",
            f"- Why this task isolates it: {TASKS[task].isolates}",
            f"- Report: [{task}/report.md]({task}/report.md)",
            "",
            *_ranking(outcome),
        ]
    return "\n".join(lines) + "\n"


def _write(folder, settings, command, claims, outcomes, status):
    payload = {
        "run": settings.run_name,
        "status": status,
        "command": command,
        "machine": machine(),
        "tasks": {
            task: str(outcome.report_dir / "report.md")
            for task, outcome in outcomes.items()
        },
        "claims": [
            {
                "advice": c["advice"],
                "verdict": c["verdict"],
                "evidence": [
                    {"task": task, **d.to_json()} for task, d in c["evidence"]
                ],
            }
            for c in claims
        ],
    }
    (folder / REPORT_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    (folder / "report.md").write_text(_markdown(settings, command, claims, outcomes))


def run_suite(settings, console, command, heads=None):
    """Runs `compare` on every task of `TASKS`, then judges every claim.

    Args:
        settings: `CompareSettings`; its `run_name` names the suite's folder.
        console: rich `Console`.
        command: string. The command line, for the reports.
        heads: optional tuple of heads for every task; defaults to each
            task's own.

    Returns:
        `SuiteOutcome`.
    """
    check_seeds(settings.seeds)
    folder = prepare_run_folders(settings, tuple(TASKS))["report_dir"]
    outcomes, interrupted = {}, False
    for task in TASKS:
        console.print(f"[bold]Task {task}[/]: {TASKS[task].claim}")
        outcome = run_compare(task_settings(settings, task, heads), console, command)
        outcomes[task] = outcome
        _write(folder, settings, command, _claims(outcomes), outcomes, "running")
        if outcome.interrupted:
            interrupted = True
            break
    claims = _claims(outcomes)
    status = "interrupted" if interrupted else "complete"
    _write(folder, settings, command, claims, outcomes, status)
    return SuiteOutcome(claims, outcomes, folder, interrupted)
