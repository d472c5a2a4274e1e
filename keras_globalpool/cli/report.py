"""The report folder of `compare`.

The folder holds `report.json` (every number, for machines), `report.md`
(the table, the paired comparisons and how each column was measured, for
people), `comparison.png` (accuracy and training time per head),
`paired.png` (each head's paired difference from the best) and
`overlays.png` (where each head looks).
"""

import json
import pathlib

from keras_globalpool.cli.charts import plot, plot_paired
from keras_globalpool.cli.paired import PairedDifference
from keras_globalpool.cli.results import export_markdown, markdown_table
from keras_globalpool.cli.verdict import summary
from keras_globalpool.viz.overlay_grid import heatmap_grid


def _pictures(report_dir, run, results, verdict, heatmaps, images, captions):
    """Draws the charts; returns the report's Markdown lines for them."""
    if not results:
        return []
    title = f"{run['run']}: {run['settings']['data']}"
    try:
        plot(results, report_dir / "comparison.png", title)
        lines = ["![accuracy and training time per head](comparison.png)"]
        against_best = verdict.get("paired", {}).get("against_best")
        if against_best:
            differences = [PairedDifference(**p) for p in against_best]
            plot_paired(differences, report_dir / "paired.png", title)
            lines += ["", "![paired differences from the best head](paired.png)"]
        if heatmaps:
            heatmap_grid(
                heatmaps, images, report_dir / "overlays.png", captions=captions
            )
            lines += [
                "",
                "## Where each head looks",
                "",
                "Attention maps, CAM or Grad-CAM of each head's first-seed model "
                "on the first test images, each with its true and predicted class:",
                "",
                "![heatmaps per head](overlays.png)",
            ]
        return lines
    except ImportError as error:
        return [f"Charts skipped: {error}"]


def _markdown(run, results, verdict, pictures):
    settings, machine, measures = run["settings"], run["machine"], run["measurement"]
    lines = [
        f"# keras-globalpool compare: {run['run']}",
        "",
        f"- Status: {run['status']} ({len(results)} of "
        f"{len(settings['heads'])} heads finished)",
        f"- Command: `{run['command']}`",
        f"- Data: {settings['data']}; {settings['train_samples']} training and "
        f"{settings['test_samples']} test images (stratified split), "
        f"{settings['image_shape']}, {settings['num_classes']} classes",
        f"- Backbone: {settings['backbone_description']}",
        f"- Training: {settings['training']}",
        f"- Machine: {machine['description']}",
        "",
        markdown_table(results),
        "",
        *(f"{line}  " for line in verdict["lines"]),
        "",
        "## How each column is measured",
        "",
        *(f"- **{name}**: {text}" for name, text in measures.items()),
        "",
        *pictures,
    ]
    export_lines = export_markdown(results)
    if export_lines:
        lines += [
            "",
            "## Export",
            "",
            "Each head's first-seed model, exported with `kgp.export` and run in "
            f"its runtime on the {settings['test_samples']} test images, against "
            "the float32 Keras model: test accuracy and its change in points, "
            "the share of test images where both predict the same class, the "
            "file's size (OpenVINO's `.bin` included) and the median latency of "
            "30 calls on one image after 3 warm-ups (Keras: `predict_on_batch`, "
            "as in the table above).",
            "",
            *export_lines,
        ]
    exported = [r for r in results if r.exports]
    if exported:
        lines += ["", "## Exported models", ""]
        lines += [f"- {r.head}: {_paths(r.exports)}" for r in exported]
    return "\n".join(lines) + "\n"


def _paths(exports):
    names = {"keras": "", "saved_model": "SavedModel "}
    return ", ".join(
        f"{names.get(format, format + ' ')}`{path}`" for format, path in exports.items()
    )


def write_report(report_dir, run, results, heatmaps=None, images=None, captions=None):
    """Writes `report.json`, `report.md` and the charts.

    The charts, `comparison.png` and `overlays.png`, need matplotlib
    (`pip install "keras-globalpool[viz]"`); without it the report says so.

    Args:
        report_dir: path of the folder, created if missing.
        run: dict describing the run: `run`, `status`, `command`, `machine`
            (with `description`), `settings` and `measurement` (column
            name to how it is measured).
        results: list of `HeadResult`, possibly empty.
        heatmaps: optional dict mapping heads to `(maps, label)` from
            `kgp.viz.overlay_grid.head_heatmaps`, drawn over `images`.
        images: the images `heatmaps` explain.
        captions: optional dict mapping heads to one caption per image.

    Returns:
        The folder, as a `pathlib.Path`.
    """
    report_dir = pathlib.Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    verdict = summary(results) if results else {"lines": ["No head finished."]}
    payload = {**run, "heads": [r.to_json() for r in results], "summary": verdict}
    (report_dir / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
    pictures = _pictures(report_dir, run, results, verdict, heatmaps, images, captions)
    (report_dir / "report.md").write_text(_markdown(run, results, verdict, pictures))
    return report_dir
