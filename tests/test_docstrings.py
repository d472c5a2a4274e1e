"""Every docstring example in the package runs, as a doctest.

Each module's examples run with the module's names and `np`, `keras` and
`kgp` in their namespace, in a fresh temporary folder (some write files),
and must print what they show. A public class or function without an example fails
`test_public_api_has_examples`.
"""

import doctest
import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

BACKEND = keras.backend.backend()
# Modules that need TensorFlow or the command line, which run on TensorFlow.
TENSORFLOW_ONLY = (
    "keras_globalpool.cli",
    "keras_globalpool.deployment",
    "keras_globalpool.serving",
    "keras_globalpool.viz",
)


def _modules():
    names = [kgp.__name__]
    for info in pkgutil.walk_packages(kgp.__path__, prefix=f"{kgp.__name__}."):
        names.append(info.name)
    return sorted(names)


MODULES = _modules()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _tests(module):
    finder = doctest.DocTestFinder(exclude_empty=True)
    # The module's own names, as `pytest --doctest-modules` gives them, and
    # the three every example may use.
    globs = {**vars(module), "np": np, "keras": keras, "kgp": kgp}
    return [t for t in finder.find(module, module.__name__, globs=globs) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name, tmp_path, monkeypatch):
    if BACKEND != "tensorflow" and name.startswith(TENSORFLOW_ONLY):
        pytest.skip("TensorFlow-only module")
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failures = []
    for test in _tests(module):
        keras.utils.set_random_seed(0)
        result = runner.run(test, out=failures.append, clear_globs=True)
        assert result.attempted > 0
    assert not failures, "".join(failures)


def _public_objects():
    for name in kgp.__all__:
        obj = getattr(kgp, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield name, obj


@pytest.mark.parametrize("name, obj", list(_public_objects()))
def test_public_api_has_examples(name, obj):
    assert ">>>" in (obj.__doc__ or ""), f"kgp.{name} has no docstring example"
