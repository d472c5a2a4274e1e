"""`ClassSpecificResidualAttention` against mmpretrain's `CSRAClsHead`.

Torch backend only. mmpretrain 1.2.0's `models/heads/multi_label_csra_head.py`
is "modified from" the CSRA authors' code (github.com/Kevinz-code/CSRA), and
its `CSRAModule.forward` is their `pipeline/csra.py`'s: the same temperature
table, with `T = 99` for max pooling. `import mmpretrain` needs mmcv and
mmengine, so the file is loaded on its own from the installed package, with
stand-ins for its mmengine and registry imports (`tests/reference_files.py`).

Their head is random-weighted and its 1x1 convolutions are copied into our
kernel (`kernel[h, :, k]` is `csra_heads[h].head.weight[k, :, 0, 0]`). For
1, 2, 4, 6 and 8 heads and two lambdas, the logits and the gradients with
respect to the input and to the kernel agree within 1e-5 in float32 (1e-12
in float64), relative to each array's largest magnitude: on an NCHW map as
theirs takes it and on the same map in NHWC; and, with 4 heads, on 1D
and 3D maps, which theirs takes as the `(batch, channels, -1, last)` map
of the same positions (CSRA does not depend on where a position is).
Theirs has no mask; a masked sample is compared with theirs on the map
cropped to its valid positions.

Run it with `KERAS_BACKEND=torch python -m pytest tests/test_parity_csra.py`.
"""

import math

import keras
import numpy as np
import pytest

import keras_globalpool as kgp
from keras_globalpool import pool_ops

if keras.backend.backend() != "torch":
    pytest.skip(
        "CSRA parity runs on the torch backend only (KERAS_BACKEND=torch)",
        allow_module_level=True,
    )

import reference_files  # noqa: E402
import torch  # noqa: E402
from layer_cases import gradients  # noqa: E402

mmpretrain_csra = reference_files.csra_head()

CHANNELS, CLASSES, BATCH = 8, 5, 3
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
HEADS = sorted(mmpretrain_csra.CSRAClsHead.temperature_settings)
# Spatial shapes by rank, small enough to keep the tests fast.
SPATIAL = {3: (11,), 4: (5, 7), 5: (3, 4, 5)}


def _their_head(num_heads, lam, dtype):
    torch.manual_seed(num_heads)
    head = mmpretrain_csra.CSRAClsHead(CLASSES, CHANNELS, num_heads, lam)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return head.to(getattr(torch, dtype))


def _their_kernel(head, grad=False):
    """Their 1x1 convolutions, or their gradients, as our kernel."""
    weights = [module.head.weight for module in head.csra_heads]
    weights = [w.grad if grad else w.detach() for w in weights]
    return torch.stack([w[:, :, 0, 0].T for w in weights]).numpy()


def _our_head(head, num_heads, lam, data_format, input_shape, dtype):
    layer = kgp.ClassSpecificResidualAttention(
        CLASSES, num_heads=num_heads, lam=lam, data_format=data_format, dtype=dtype
    )
    layer.build(input_shape)
    layer.kernel.assign(_their_kernel(head))
    return layer


def _theirs(head, x, dy):
    """Their logits and gradients with respect to `x` and the kernel."""
    head.zero_grad(set_to_none=True)
    xt = torch.tensor(x, requires_grad=True)
    logits = head((xt,))
    torch.sum(logits * torch.from_numpy(dy)).backward()
    return logits.detach().numpy(), xt.grad.numpy(), _their_kernel(head, grad=True)


def _relative_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _check(got, expected, dtype):
    for name, a, b in zip(("logits", "dx", "dkernel"), got, expected, strict=True):
        assert a.dtype == b.dtype == dtype, name
        error = _relative_error(a, b)
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.3g}"


def _to_nchw(x, data_format):
    """Our map as theirs takes it: NCHW, with any positions as `(-1, last)`."""
    if data_format == "channels_last":
        x = np.moveaxis(x, -1, 1)
    return np.ascontiguousarray(x.reshape(*x.shape[:2], -1, x.shape[-1]))


def _from_nchw(grad, data_format, shape):
    """Their gradient with respect to the input, in our map's layout."""
    if data_format == "channels_last":
        first = (shape[0], shape[-1], *shape[1:-1])
        return np.moveaxis(grad.reshape(first), 1, -1)
    return grad.reshape(shape)


def _check_map(rank, data_format, num_heads, lam, dtype):
    spatial = SPATIAL[rank]
    shape = (BATCH, CHANNELS, *spatial)
    if data_format == "channels_last":
        shape = (BATCH, *spatial, CHANNELS)
    rng = np.random.default_rng(rank)
    x = rng.normal(size=shape).astype(dtype)
    dy = rng.normal(size=(BATCH, CLASSES)).astype(dtype)
    head = _their_head(num_heads, lam, dtype)
    layer = _our_head(head, num_heads, lam, data_format, shape, dtype)

    logits, dx, dkernel = _theirs(head, _to_nchw(x, data_format), dy)
    expected = (logits, _from_nchw(dx, data_format, shape), dkernel)
    got = (keras.ops.convert_to_numpy(layer(x)), *gradients(layer, x, dy))
    _check(got, expected, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lam", [0.1, 1.0])
@pytest.mark.parametrize("num_heads", HEADS)
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_matches_mmpretrain(data_format, num_heads, lam, dtype):
    """A 2D map: NCHW as theirs takes it, and NHWC."""
    _check_map(4, data_format, num_heads, lam, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("rank", [3, 5])
def test_matches_mmpretrain_1d_and_3d(rank, data_format, dtype):
    """4 heads: softmaxes of temperatures 1, 2 and 4, and a max."""
    _check_map(rank, data_format, 4, 1.0, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_heads", [1, 4, 8])
def test_masked_sample_matches_mmpretrain_on_its_crop(num_heads, dtype):
    """A mask that keeps a `h x w` corner of each map is theirs on the
    cropped map; the gradient of the masked positions is 0."""
    crops = [(5, 7), (2, 3), (1, 1)]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(len(crops), 5, 7, CHANNELS)).astype(dtype)
    dy = rng.normal(size=(len(crops), CLASSES)).astype(dtype)
    mask = np.zeros(x.shape[:-1], bool)
    for i, (h, w) in enumerate(crops):
        mask[i, :h, :w] = True
    head = _their_head(num_heads, 0.5, dtype)
    layer = _our_head(head, num_heads, 0.5, "channels_last", x.shape, dtype)

    logits, dx = [], np.zeros_like(x)
    dkernel = 0
    for i, (h, w) in enumerate(crops):
        crop = _to_nchw(x[i : i + 1, :h, :w], "channels_last")
        out, grad, kernel_grad = _theirs(head, crop, dy[i : i + 1])
        logits.append(out)
        dx[i, :h, :w] = np.moveaxis(grad[0], 0, -1)
        dkernel = dkernel + kernel_grad
    expected = (np.concatenate(logits), dx, dkernel)
    got = (
        keras.ops.convert_to_numpy(layer(x, mask=mask)),
        *gradients(layer, x, dy, mask),
    )
    _check(got, expected, dtype)


def test_temperatures_are_mmpretrains():
    """The paper's table; their `T = 99` is our `inf`, max pooling."""
    settings = mmpretrain_csra.CSRAClsHead.temperature_settings
    theirs = {
        heads: tuple(math.inf if t == 99 else float(t) for t in temperatures)
        for heads, temperatures in settings.items()
    }
    assert pool_ops.CSRA_TEMPERATURES == theirs
    for heads, temperatures in theirs.items():
        layer = kgp.ClassSpecificResidualAttention(CLASSES, num_heads=heads)
        assert layer.temperatures == temperatures
