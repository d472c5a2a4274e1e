"""Loads modules of timm's `timm/layers/` without importing the `timm` package.

`import timm` needs torchvision, and the only torchvision for torch 2.13.0
that pip finds here is a CUDA build that does not import beside the CPU
torch (`operator torchvision::nms does not exist`). The modules under
`timm/layers/` need only torch, so the parity tests load them from the
installed package's files into a private package, `_timm_layers`, in place
of `timm.layers`: its `__init__.py` (which imports all of timm's layers) is
never run, and the relative imports between the files (`from .config
import ...`) resolve inside the private package. torchvision is hidden
while they load: timm treats it as optional.
"""

import importlib
import importlib.util
import pathlib
import sys
import types

PACKAGE = "_timm_layers"
_ABSENT = object()


def layers_dir():
    """The installed `timm/layers` folder, or None without timm."""
    spec = importlib.util.find_spec("timm")  # finds the files, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    layers = pathlib.Path(next(iter(spec.submodule_search_locations))) / "layers"
    return layers if layers.is_dir() else None


def load(names):
    """timm's `timm/layers/<name>.py` modules, each loaded once.

    Args:
        names: the module names, such as `["attention_pool"]`. The files
            they import from `timm/layers/` are loaded with them.

    Returns:
        The modules, in the order of `names`.
    """
    layers = layers_dir()
    # The test extra installs timm: without it, a parity module fails.
    assert layers is not None, "timm is missing: pip install '.[test]'"
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(layers)]
        sys.modules[PACKAGE] = package
    # timm's `_fx.py` (which `attention.py` imports) tries torchvision and
    # catches only an ImportError; the broken torchvision raises a
    # RuntimeError instead. None in `sys.modules` makes it an ImportError.
    saved = sys.modules.get("torchvision", _ABSENT)
    sys.modules["torchvision"] = None
    try:
        return [importlib.import_module(f"{PACKAGE}.{name}") for name in names]
    finally:
        if saved is _ABSENT:
            del sys.modules["torchvision"]
        else:
            sys.modules["torchvision"] = saved
