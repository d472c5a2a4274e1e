"""`GlobalGatedAttentionPooling` against torchmil's `AttentionPool`.

Torch backend only. torchmil 1.0.2's `torchmil/nn/attention/attention_pool.py`
is Ilse et al.'s attention MIL pooling: `z = X^T softmax(f)` with
`f = fc2(tanh(fc1 X) * sigmoid(fc_gated X))`, or `fc2(tanh(fc1 X))`
ungated; `fc2` has no bias, as our score kernel. Its random weights are
copied into ours (torch's `Linear` stores `(out, in)`, our kernels are
`(in, out)`). The pooled bags, the weights (ours with
`return_attention_scores=True`, theirs the masked softmax of the
pre-softmax `f` that `return_att=True` gives) and the gradients with
respect to the input and to every weight agree within 1e-5 in float32
(1e-12 in float64), relative to each array's largest magnitude: gated and
ungated, with and without a mask (bags of 7, 4 and 1 valid instances), on
a `(batch, bag, features)` bag as theirs takes it, the same bag in
`channels_first`, and a 2D map, which theirs takes as its positions
flattened into a bag. A fully masked bag is left out: theirs gives NaN
(a softmax of `-inf` only), ours zeros, as documented.

`torchmil.nn` imports only torch and NumPy, so this module imports it.
Run it with `KERAS_BACKEND=torch python -m pytest tests/test_parity_gated_attention.py`.
"""

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

if keras.backend.backend() != "torch":
    pytest.skip(
        "torchmil parity runs on the torch backend only (KERAS_BACKEND=torch)",
        allow_module_level=True,
    )

import torch  # noqa: E402
from layer_cases import gradients  # noqa: E402
from torchmil.nn import AttentionPool, masked_softmax  # noqa: E402

CHANNELS, UNITS = 8, 6
LENGTHS = (7, 4, 1)  # the valid instances of each bag, when masked
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
# name in ours -> (their parameter, whether to transpose it)
WEIGHTS = {
    "hidden_kernel": ("fc1.module.weight", True),
    "hidden_bias": ("fc1.module.bias", False),
    "gate_kernel": ("fc_gated.module.weight", True),
    "gate_bias": ("fc_gated.module.bias", False),
    "score_kernel": ("fc2.weight", True),
}
# Our input layout -> its shape for the bag shape `(batch, 7, channels)`.
LAYOUTS = {
    "bag": ("channels_last", (len(LENGTHS), 7, CHANNELS)),
    "bag_channels_first": ("channels_first", (len(LENGTHS), CHANNELS, 7)),
    "map_2d": ("channels_last", (len(LENGTHS), 2, 4, CHANNELS)),  # 8 instances
}


def _their_pool(gated, dtype):
    torch.manual_seed(int(gated))
    module = AttentionPool(in_dim=CHANNELS, att_dim=UNITS, gated=gated)
    with torch.no_grad():  # off the initial values: the biases matter
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn_like(parameter))
    return module.to(getattr(torch, dtype))


def _in_our_names(tensors):
    """Their parameters (or their gradients) by our weights' names."""
    ours = {}
    for name, (theirs, transpose) in WEIGHTS.items():
        if theirs in tensors:
            value = tensors[theirs].detach().numpy()
            ours[name] = value.T if transpose else value
    return ours


def _to_bag(x, data_format):
    """Our input as their `(batch, bag, features)`."""
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    return np.ascontiguousarray(x.reshape(x.shape[0], -1, x.shape[-1]))


def _from_bag(grad, data_format, shape):
    """Their gradient with respect to the bag, in our input's layout."""
    if data_format == "channels_first":
        return np.moveaxis(grad, -1, 1).reshape(shape)
    return grad.reshape(shape)


def _relative_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_torchmil(layout, gated, masked, dtype):
    data_format, shape = LAYOUTS[layout]
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(dtype)
    dy = rng.normal(size=(shape[0], CHANNELS)).astype(dtype)
    bag = _to_bag(x, data_format)
    mask, bag_mask = None, None
    if masked:
        bag_mask = np.arange(bag.shape[1])[None] < np.array(LENGTHS)[:, None]
        spatial = shape[2:] if data_format == "channels_first" else shape[1:-1]
        mask = bag_mask.reshape(shape[0], *spatial)

    module = _their_pool(gated, dtype)
    layer = kgp.GlobalGatedAttentionPooling(
        units=UNITS, gated=gated, data_format=data_format, dtype=dtype
    )
    layer.build(shape)
    their_weights = _in_our_names(dict(module.named_parameters()))
    assert {w.name for w in layer.weights} == set(their_weights)
    for weight in layer.weights:
        weight.assign(their_weights[weight.name])

    xt = torch.tensor(bag, requires_grad=True)
    mask_t = None if bag_mask is None else torch.from_numpy(bag_mask)
    pooled, logits = module(xt, mask=mask_t, return_att=True)
    torch.sum(pooled * torch.from_numpy(dy)).backward()
    scores = masked_softmax(logits, mask_t)  # their weights, per instance
    expected = {
        "output": pooled.detach().numpy(),
        "scores": scores.detach().numpy(),
        "x": _from_bag(xt.grad.numpy(), data_format, shape),
    }
    expected.update(_in_our_names({n: p.grad for n, p in module.named_parameters()}))

    out, our_scores = layer(x, mask=mask, return_attention_scores=True)
    got = {
        "output": keras.ops.convert_to_numpy(out),
        "scores": keras.ops.convert_to_numpy(our_scores).reshape(bag.shape[:2]),
    }
    grads = gradients(layer, x, dy, mask)
    got["x"] = grads[0]
    got.update(
        {w.name: g for w, g in zip(layer.trainable_weights, grads[1:], strict=True)}
    )
    assert got.keys() == expected.keys()
    for name, value in got.items():
        assert value.dtype == expected[name].dtype == dtype, name
        error = _relative_error(value, expected[name])
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.3g}"
    if masked:  # the padding gets no weight, and so no gradient
        assert not np.any(got["scores"][~bag_mask])
        assert not np.any(_to_bag(got["x"], data_format)[~bag_mask])


def test_defaults_are_the_papers():
    """128 hidden units and tanh, as theirs; ours is gated by default,
    theirs is not (Ilse et al. give both)."""
    theirs = AttentionPool(in_dim=CHANNELS)
    ours = kgp.GlobalGatedAttentionPooling()
    assert ours.units == theirs.att_dim == 128
    assert theirs.act == "tanh"
    assert ours.gated and not theirs.gated
