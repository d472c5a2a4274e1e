"""`GlobalLSEPooling` against timm's `LsePlus2d` and `LsePlus1d` (torch only).

With the same `r`, the outputs and the gradients with respect to the input
and to `r` agree within 1e-5 relative in float32.

The test extra installs timm. `import timm` needs torchvision, and the
only torchvision for torch 2.13.0 that pip finds here is a CUDA build that
does not import beside the CPU torch (`operator torchvision::nms does not
exist`). So this module loads timm's `timm/layers/other_pool.py` (and the
`config.py` beside it, which it imports) on their own, from the installed
package's files; they need only torch. Run it with
`KERAS_BACKEND=torch python -m pytest tests/test_parity_timm.py`.
"""

import importlib.util
import pathlib
import sys
import types

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

if keras.backend.backend() != "torch":
    pytest.skip(
        "timm parity runs on the torch backend only (KERAS_BACKEND=torch)",
        allow_module_level=True,
    )

import torch  # noqa: E402


def _timm_layers_dir():
    spec = importlib.util.find_spec("timm")  # finds the files, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    layers = pathlib.Path(next(iter(spec.submodule_search_locations))) / "layers"
    return layers if (layers / "other_pool.py").is_file() else None


def _load_other_pool(layers):
    """timm's `other_pool` module, without importing the `timm` package."""
    package = types.ModuleType("_timm_layers")
    package.__path__ = [str(layers)]
    sys.modules["_timm_layers"] = package
    for name in ("config", "other_pool"):  # other_pool does `from .config import`
        spec = importlib.util.spec_from_file_location(
            f"_timm_layers.{name}", layers / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["_timm_layers.other_pool"]


_LAYERS = _timm_layers_dir()
# The test extra installs timm: without it, this module fails, not skips.
assert _LAYERS is not None, "timm is missing: pip install '.[test]'"
timm_pool = _load_other_pool(_LAYERS)

RTOL = 1e-5
# 10 is the default of both. Below r = 1 with values of order 1, timm's
# `exp(r * (x - max))` rounds most of the differences away: see
# `test_near_average_is_closer_to_float64_than_timm`.
CASES = [(r, scale) for r in (1.0, 10.0, 50.0) for scale in (1.0, 100.0)]
CASES += [(0.05, 100.0)]


def _check_parity(ours, theirs):
    """Each value within `RTOL` of timm's; entries timm underflows to 0 in
    the gradient (softmax weights below 1e-38) must be as tiny in ours."""
    for name, a, b in zip(("output", "dx", "dr"), ours, theirs, strict=True):
        assert a.shape == b.shape, name
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-37, err_msg=name)


def _ours(x, r, data_format):
    """Output and gradients `(dx, dr)` of `sum(y * dy)`, `dy` fixed."""
    layer = kgp.GlobalLSEPooling(r=r, data_format=data_format)
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    dx, dr = torch.autograd.grad((y * _dy(y)).sum(), [xt, layer.r_weight.value])
    return [t.detach().numpy() for t in (y, dx, dr)]


def _theirs(module, x):
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt)
    dx, dr = torch.autograd.grad((y * _dy(y)).sum(), [xt, module.r])
    return [t.detach().numpy() for t in (y, dx, dr)]


def _dy(y):
    return torch.tensor(
        np.random.default_rng(1).normal(size=tuple(y.shape)), dtype=y.dtype
    )


def _inputs(shape, scale, seed=0):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=shape)).astype("float32")


@pytest.mark.parametrize("r, scale", CASES)
def test_matches_lse_plus_2d(r, scale):
    x = _inputs((3, 5, 7, 6), scale)  # NCHW, as timm takes it
    theirs = _theirs(timm_pool.LsePlus2d(r=r, flatten=True), x)
    _check_parity(_ours(x, r, "channels_first"), theirs)


@pytest.mark.parametrize("r, scale", CASES)
def test_matches_lse_plus_1d(r, scale):
    x = _inputs((3, 11, 4), scale, seed=2)  # NLC, as timm takes it
    theirs = _theirs(timm_pool.LsePlus1d(r=r), x)
    _check_parity(_ours(x, r, "channels_last"), theirs)


def test_near_average_is_closer_to_float64_than_timm():
    """r = 0.05 on values of order 1: timm's float32 output is 1e-5 off the
    float64 value, ours (`log1p` of the mean of `expm1`) ten times closer."""
    from keras_globalpool import reference

    x = _inputs((3, 5, 7, 6), 1.0)
    exact = reference.lse_pool(x, r=0.05, data_format="channels_first")
    ours = _ours(x, 0.05, "channels_first")[0]
    theirs = _theirs(timm_pool.LsePlus2d(r=0.05, flatten=True), x)[0]
    scale = np.max(np.abs(exact))
    ours_error = np.max(np.abs(ours - exact)) / scale
    timm_error = np.max(np.abs(theirs - exact)) / scale
    assert ours_error <= 4e-6 and ours_error * 4 <= timm_error


def test_default_r_is_timms():
    assert kgp.GlobalLSEPooling().r == timm_pool.LsePlus2d().r.item()
