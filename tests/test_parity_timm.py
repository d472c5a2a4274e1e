"""Our poolings against timm's, in `timm/layers/other_pool.py` (torch only).

- `GlobalLSEPooling` against `LsePlus2d` and `LsePlus1d`: with the same
  `r`, the outputs and the gradients with respect to the input and to `r`
  agree within 1e-5 relative in float32.
- `GlobalSimPooling` against `SimPool2d` (an NCHW input, as timm takes it,
  and the same map in NHWC for our `channels_last`) and `SimPool1d` (NLC):
  timm's weights, moved off their initial values, are copied into ours
  (torch's `Linear` stores its weight as `(out, in)`, our kernels are
  `(in, out)`). The outputs and the gradients with respect to the input
  and to every weight agree within 1e-5 in float32, relative to each
  array's largest magnitude (a gradient entry can cancel to near 0), for
  `gamma` None and 2, `qk_norm` off and on, `qkv_bias` off and on, and 1
  and 2 heads. The defaults are timm's.

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
from keras import ops

import keras_globalpool as kgp

if keras.backend.backend() != "torch":
    pytest.skip(
        "timm parity runs on the torch backend only (KERAS_BACKEND=torch)",
        allow_module_level=True,
    )

import torch  # noqa: E402
from layer_cases import gradients  # noqa: E402


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


# === SimPool ===

SIM_CHANNELS = 8
SIM_RTOL = {"float32": RTOL, "float64": 1e-12}
# Our weight -> (timm's parameter, whether to transpose it).
SIM_WEIGHTS = {
    "norm_gamma": ("norm.weight", False),
    "norm_beta": ("norm.bias", False),
    "query_kernel": ("q.weight", True),
    "query_bias": ("q.bias", False),
    "key_kernel": ("k.weight", True),
    "key_bias": ("k.bias", False),
    "query_norm_gamma": ("q_norm.weight", False),
    "query_norm_beta": ("q_norm.bias", False),
    "key_norm_gamma": ("k_norm.weight", False),
    "key_norm_beta": ("k_norm.bias", False),
}
SIM_CASES = [
    {"num_heads": heads, "qkv_bias": bias, "qk_norm": norm, "gamma": gamma}
    for heads in (1, 2)
    for bias in (False, True)
    for norm in (False, True)
    for gamma in (None, 2.0)
]
# The weights whose exact gradient can be 0 -> the timm weight whose gradient
# sizes their rounding noise: the key kernel's for the shifts of the keys.
VANISHING = {
    "key_norm_beta": "k.weight",
    "key_bias": "k.weight",
    "norm_beta": "norm.weight",
}


def _vanishing(layer):
    """The weights of `layer` whose exact gradient is 0. A shift of every
    key by the same vector shifts every logit of a head alike, which the
    softmax cancels (unless `qk_norm` normalizes it away first); with
    `gamma`, a shift of the values cancels in `v - min(v)`."""
    names = {"key_norm_beta"}
    if not layer.qk_norm:
        names.add("key_bias")
        if layer.gamma is not None:
            names.add("norm_beta")  # it shifts the keys and the values
    return names


def _sim_modules(module_class, kwargs, data_format, x_shape, dtype):
    """timm's module with random weights, and ours holding the same."""
    torch.manual_seed(0)
    theirs = module_class(SIM_CHANNELS, **kwargs)
    with torch.no_grad():
        for parameter in theirs.parameters():  # off LayerNorm's 1 and 0
            parameter.copy_(0.5 * torch.randn_like(parameter))
    theirs = theirs.to(getattr(torch, dtype))
    ours = kgp.GlobalSimPooling(**kwargs, data_format=data_format, dtype=dtype)
    ours.build(x_shape)
    params = dict(theirs.named_parameters())
    for weight in ours.weights:
        name, transpose = SIM_WEIGHTS[weight.name]
        value = params[name].detach().numpy()
        weight.assign(value.T if transpose else value)
    return theirs, ours


def _sim_theirs(module, x, dy):
    """timm's output and gradients: `{"output", "x", *parameter names}`."""
    xt = torch.tensor(x, requires_grad=True)
    params = dict(module.named_parameters())
    y = module(xt)
    grads = torch.autograd.grad((y * torch.tensor(dy)).sum(), [xt, *params.values()])
    names = ["output", "x", *params]
    return dict(zip(names, (t.detach().numpy() for t in (y, *grads)), strict=True))


def _sim_ours(layer, x, dy, to_timm_layout):
    """Ours, keyed and laid out as `_sim_theirs` returns timm's."""
    grads = gradients(layer, x, dy)
    ours = {
        "output": ops.convert_to_numpy(layer(x)),
        "x": to_timm_layout(grads[0]),
    }
    for weight, grad in zip(layer.trainable_weights, grads[1:], strict=True):
        name, transpose = SIM_WEIGHTS[weight.name]
        ours[name] = grad.T if transpose else grad
    return ours


def _check_sim_parity(case, data_format, x_shape, seed, to_timm_layout=None):
    """Our output and gradients against timm's, in float32 and float64.

    Each array within `SIM_RTOL` of timm's, relative to its largest
    magnitude. In float32 timm's result is itself off the exact one (timm's
    in float64) by its rounding, up to 3e-5 of the largest magnitude for
    gradients whose terms cancel, so ours may differ from it by twice that
    error more. A gradient that is exactly 0 must be rounding noise in both.
    """
    module_class, kwargs = case
    to_timm_layout = to_timm_layout or (lambda a: a)
    rng = np.random.default_rng(seed)
    x64, dy64 = rng.normal(size=x_shape), rng.normal(size=(x_shape[0], SIM_CHANNELS))
    exact = None
    for dtype in ("float64", "float32"):
        x, dy = x64.astype(dtype), dy64.astype(dtype)
        theirs, layer = _sim_modules(module_class, kwargs, data_format, x_shape, dtype)
        expected = _sim_theirs(theirs, to_timm_layout(x), dy)
        got = _sim_ours(layer, x, dy, to_timm_layout)
        exact = exact or expected
        assert got.keys() == expected.keys()  # every weight of timm's
        vanishing = {
            SIM_WEIGHTS[name][0]: VANISHING[name] for name in _vanishing(layer)
        }
        for name, b in expected.items():
            a, rtol = got[name], SIM_RTOL[dtype]
            assert a.shape == b.shape and a.dtype == b.dtype == dtype, name
            if name in vanishing:
                noise = rtol * np.max(np.abs(expected[vanishing[name]]))
                assert max(np.max(np.abs(a)), np.max(np.abs(b))) <= noise, name
                continue
            atol = rtol * np.max(np.abs(b))
            if dtype == "float32":
                atol += 2 * np.max(np.abs(b - exact[name]))
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("kwargs", SIM_CASES, ids=str)
def test_matches_sim_pool_2d(kwargs):
    case = (timm_pool.SimPool2d, kwargs)
    _check_sim_parity(case, "channels_first", (3, SIM_CHANNELS, 5, 7), seed=3)


@pytest.mark.parametrize("kwargs", SIM_CASES, ids=str)
def test_matches_sim_pool_2d_channels_last(kwargs):
    """The same maps in NHWC: the gradient goes back to timm's NCHW."""

    def to_nchw(a):
        return np.ascontiguousarray(np.moveaxis(a, -1, 1))

    case = (timm_pool.SimPool2d, kwargs)
    _check_sim_parity(case, "channels_last", (3, 5, 7, SIM_CHANNELS), 4, to_nchw)


@pytest.mark.parametrize("kwargs", SIM_CASES, ids=str)
def test_matches_sim_pool_1d(kwargs):
    case = (timm_pool.SimPool1d, kwargs)
    _check_sim_parity(case, "channels_last", (3, 11, SIM_CHANNELS), seed=5)


def test_sim_pool_defaults_are_timms():
    ours, theirs = kgp.GlobalSimPooling(), timm_pool.SimPool2d(SIM_CHANNELS)
    assert ours.num_heads == theirs.num_heads
    assert ours.gamma is theirs.gamma is None
    assert ours.layer_norm_epsilon == theirs.norm.eps
    assert ours.qkv_bias is (theirs.q.bias is not None)
    assert ours.qk_norm is isinstance(theirs.q_norm, torch.nn.LayerNorm)
