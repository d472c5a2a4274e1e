"""Loads one file of an installed reference package without importing it.

The parity tests compare our layers with other projects' code, installed
from PyPI by the test extra and never copied into this repository. Some of
those files need only torch, but their package's `__init__.py` imports far
more: `import mmpretrain` imports mmcv and mmengine, which mmpretrain does
not even declare, and its `models/heads/__init__.py` imports every head.
So `load_file` runs the one file from the installed package's files (found
with `importlib.util.find_spec`, which imports nothing) as a module of a
private package, `_reference_<package>`, and puts minimal stand-ins for
what the file imports in `sys.modules` while it runs: its relative imports
(`from .multi_label_cls_head import ...`) resolve to stand-ins inside the
private package, and its absolute ones (`from mmengine.model import ...`)
to stand-in modules, removed afterwards, with any real module of the same
name put back. The private package has no path, so nothing else of the
reference package runs.

`csra_head()` loads mmpretrain 1.2.0's `models/heads/multi_label_csra_head.py`
(`CSRAModule` and `CSRAClsHead`, modified from the CSRA authors' code; the
forward is theirs). It imports `BaseModule` and `ModuleList` from
mmengine, whose `BaseModule` is a `torch.nn.Module` that also takes an
`init_cfg` (applied only by `init_weights()`, which the tests never call:
they set the weights), mmpretrain's `MODELS` registry, used only as the
decorator `@MODELS.register_module()`, and the base class
`MultiLabelClsHead`, whose constructor builds a loss from the registry;
its forward is not used (`CSRAClsHead` overrides it).

torchmil needs none of this: `torchmil.nn` imports only torch and NumPy,
so the tests import it as usual.
"""

import importlib.util
import pathlib
import sys
import types

_ABSENT = object()


def package_dir(package):
    """The installed package's folder, or None if it is not installed."""
    spec = importlib.util.find_spec(package)  # finds the files, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def load_file(package, path, stand_ins):
    """The module in the file `path` of the installed `package`, loaded once.

    Args:
        package: the import name of the installed package, such as
            `"mmpretrain"`.
        path: the file, relative to the package's folder.
        stand_ins: dict from a module name the file imports to a dict of
            that module's attributes. A name that starts with `.` is a
            sibling of the file, for its relative imports.

    Returns:
        The module, named `_reference_<package>.<file stem>`.
    """
    root = package_dir(package)
    # The test extra installs every reference: without it, a parity module fails.
    assert root is not None, f"{package} is missing: pip install '.[test]'"
    private = f"_reference_{package}"
    name = f"{private}.{pathlib.PurePath(path).stem}"
    if name in sys.modules:
        return sys.modules[name]
    if private not in sys.modules:
        parent = types.ModuleType(private)
        parent.__path__ = []  # only what is in sys.modules imports from here
        sys.modules[private] = parent

    modules = {}
    for module_name, attributes in stand_ins.items():
        if module_name.startswith("."):
            module_name = private + module_name
        module = types.ModuleType(module_name)
        module.__dict__.update(attributes)
        modules[module_name] = module
    for module_name in list(modules):  # `import a.b` needs `a` as a package
        parent_name = module_name.rpartition(".")[0]
        while parent_name and parent_name != private:
            modules.setdefault(parent_name, types.ModuleType(parent_name))
            modules[parent_name].__path__ = []
            parent_name = parent_name.rpartition(".")[0]

    saved = {n: sys.modules.get(n, _ABSENT) for n in modules}
    sys.modules.update(modules)
    try:
        spec = importlib.util.spec_from_file_location(name, root / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    finally:
        for module_name, previous in saved.items():
            if previous is _ABSENT:
                del sys.modules[module_name]
            else:
                sys.modules[module_name] = previous
    return module


class _Registry:
    """mmengine's `Registry`, as the file uses it: a decorator that keeps
    the class as it is."""

    def register_module(self, *args, **kwargs):
        return lambda cls: cls


def csra_head():
    """mmpretrain's `multi_label_csra_head` module: `CSRAClsHead`, `CSRAModule`."""
    import torch

    class BaseModule(torch.nn.Module):
        """mmengine's base module: `init_cfg` is for `init_weights()` only."""

        def __init__(self, init_cfg=None):
            super().__init__()
            self.init_cfg = init_cfg

    class MultiLabelClsHead(BaseModule):
        """mmpretrain's base head without its loss, threshold and top-k,
        which only its `loss` and `predict` use."""

        def __init__(self, init_cfg=None, **kwargs):
            super().__init__(init_cfg=init_cfg)

    return load_file(
        "mmpretrain",
        "models/heads/multi_label_csra_head.py",
        {
            "mmengine.model": {
                "BaseModule": BaseModule,
                "ModuleList": torch.nn.ModuleList,
            },
            "mmpretrain.registry": {"MODELS": _Registry()},
            ".multi_label_cls_head": {"MultiLabelClsHead": MultiLabelClsHead},
        },
    )
