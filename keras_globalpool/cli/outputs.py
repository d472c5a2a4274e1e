"""Where `compare` writes: a safe run name, and run folders checked before training.

A run writes `report_dir/run_name/` and, when it exports,
`saved_models/run_name/`. Both are checked before the data load (the name,
and that no earlier run is there unless `overwrite`), then created and
probed with a test file before the first head trains, so a mistake costs
seconds, not a training.
"""

import pathlib
import re
import shutil
import tempfile

# One folder name, safe in every shell and file system: no separator, and
# no leading dot (hidden, `.`, `..`) or dash (read as an option).
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# `compare` writes this first into every report folder.
REPORT_FILE = "report.json"


def check_run_name(run_name):
    """Raises a Keras-style `ValueError` unless `run_name` is a safe folder name.

    Args:
        run_name: string. Names the run's report and model folders.

    Returns:
        `run_name`, unchanged.

    Example:

    >>> from keras_globalpool.cli.outputs import check_run_name
    >>> check_run_name("resnet-96px")
    'resnet-96px'
    """
    if not isinstance(run_name, str) or not _RUN_NAME.fullmatch(run_name):
        raise ValueError(
            "`run_name` must be one folder name: 1 to 128 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit. "
            f"Received: run_name={run_name!r}"
        )
    return run_name


def run_folders(settings):
    """The folders a run writes, keyed by the setting that places them.

    Args:
        settings: `CompareSettings`.

    Returns:
        dict from `"report_dir"` (and `"saved_models"` when the run
        exports) to a `pathlib.Path`.
    """
    folders = {"report_dir": pathlib.Path(settings.report_dir) / settings.run_name}
    if settings.export:
        folders["saved_models"] = (
            pathlib.Path(settings.saved_models) / settings.run_name
        )
    return folders


def _written_by_compare(folder, heads):
    """Whether `folder` holds only what `compare` writes there."""
    entries = list(folder.iterdir())
    return (folder / REPORT_FILE).is_file() or all(
        entry.is_dir() and entry.name in heads for entry in entries
    )


def check_new_run(settings, heads):
    """Raises a `ValueError` if the run would write over files; changes nothing.

    A run folder that is missing or empty is free. One that holds files is
    refused, unless `settings.overwrite` is set and `compare` wrote it: a
    report folder (with `report.json`) or a models folder of head folders.

    Args:
        settings: `CompareSettings`.
        heads: every head name a models folder may hold.

    Returns:
        `run_folders(settings)`.
    """
    folders = run_folders(settings)
    for option, folder in folders.items():
        if folder.exists() and not folder.is_dir():
            raise ValueError(
                f"`{option}` must leave room for the run's folder. Received: "
                f"{option}={str(folder.parent)!r}, where {str(folder)!r} is a file"
            )
        if not folder.is_dir() or not any(folder.iterdir()):
            continue
        if not settings.overwrite:
            raise ValueError(
                "`run_name` must name a new run. Received: "
                f"run_name={settings.run_name!r}, but {str(folder)!r} already "
                "holds files; choose another `--run-name`, or pass `--overwrite` "
                "to replace that run"
            )
        if not _written_by_compare(folder, heads):
            raise ValueError(
                "`--overwrite` replaces only folders that `compare` wrote. "
                f"Received: {str(folder)!r}, which holds other files; move them "
                "away or choose another `--run-name`"
            )
    return folders


def prepare_run_folders(settings, heads):
    """Checks, (re)creates and test-writes every run folder.

    Args:
        settings: `CompareSettings`.
        heads: every head name a models folder may hold.

    Returns:
        `run_folders(settings)`, each an existing, empty, writable folder.
    """
    folders = check_new_run(settings, heads)
    for option, folder in folders.items():
        try:
            # The two folders are one when both settings name the same place.
            if settings.overwrite and folder.is_dir():
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise ValueError(
                f"`{option}` must be a folder this user can write. Received: "
                f"{option}={str(folder.parent)!r}: cannot write {str(folder)!r} "
                f"({error.strerror or error})"
            ) from error
    return folders
