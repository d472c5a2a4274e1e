"""`GlobalMultiHeadAttentionPooling` against timm's `AttentionPoolLatent`.

Torch backend only. timm's module is built as its ViT builds it for
`global_pool="map"` (the SigLIP head): LayerNorms of epsilon 1e-6 before
the MLP and for `qk_norm`, GELU, and `pool_type="avg"` to average the
latents. Its weights are copied into ours (torch's `Linear` stores
`(out, in)`, and timm's `kv` stacks the key and value kernels). The
outputs and the gradients with respect to the input and to every weight
agree within 1e-5 in float32 (1e-12 in float64), relative to the largest
magnitude of each array, for 1 and 2 latents, with and without the MLP and
`qk_norm`, and with a key-padding mask, which timm's `forward` takes as an
additive `attn_mask` (samples of 7, 4 and 1 valid tokens).

timm's `mlp_ratio=0` does not remove its MLP (`Mlp` reads a hidden size of
0 as "as many as the inputs"), so our `mlp_ratio=0` is compared with timm's
module with `mlp = None`, the branch its `forward` skips.

Run it with `KERAS_BACKEND=torch python -m pytest tests/test_parity_timm_map.py`.
"""

import functools

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

if keras.backend.backend() != "torch":
    pytest.skip(
        "timm parity runs on the torch backend only (KERAS_BACKEND=torch)",
        allow_module_level=True,
    )

import timm_files  # noqa: E402
import torch  # noqa: E402
from layer_cases import gradients  # noqa: E402

(timm_pool,) = timm_files.load(["attention_pool"])

CHANNELS, HEADS = 8, 2
LENGTHS = (7, 4, 1)  # the valid tokens of each sample, when masked
# name in ours -> (timm parameter, whether to transpose it)
WEIGHTS = {
    "query_kernel": ("q.weight", True),
    "query_bias": ("q.bias", False),
    "query_norm_gamma": ("q_norm.weight", False),
    "query_norm_beta": ("q_norm.bias", False),
    "key_norm_gamma": ("k_norm.weight", False),
    "key_norm_beta": ("k_norm.bias", False),
    "output_kernel": ("proj.weight", True),
    "output_bias": ("proj.bias", False),
    "mlp_norm_gamma": ("norm.weight", False),
    "mlp_norm_beta": ("norm.bias", False),
    "mlp_hidden_kernel": ("mlp.fc1.weight", True),
    "mlp_hidden_bias": ("mlp.fc1.bias", False),
    "mlp_output_kernel": ("mlp.fc2.weight", True),
    "mlp_output_bias": ("mlp.fc2.bias", False),
}
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def _timm_module(latent_len, mlp_ratio, qk_norm, dtype):
    torch.manual_seed(0)
    module = timm_pool.AttentionPoolLatent(
        CHANNELS,
        num_heads=HEADS,
        mlp_ratio=mlp_ratio,
        qk_norm=qk_norm,
        latent_len=latent_len,
        pool_type="avg",
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
    )
    if mlp_ratio == 0:
        module.mlp = None
    module = module.to(getattr(torch, dtype))
    with torch.no_grad():  # off timm's initial values: norms and biases matter
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn_like(parameter))
    return module


def _timm_weights(module):
    """timm's parameters (or their gradients) under our weights' names."""
    params = dict(module.named_parameters())

    def value(name):
        tensor = params[name] if isinstance(name, str) else name
        return tensor.detach().cpu().numpy()

    channels = CHANNELS
    kv_weight, kv_bias = value("kv.weight"), value("kv.bias")
    ours = {
        "latent": value("latent")[0],
        "key_kernel": kv_weight[:channels].T,
        "key_bias": kv_bias[:channels],
        "value_kernel": kv_weight[channels:].T,
        "value_bias": kv_bias[channels:],
    }
    for name, (theirs, transpose) in WEIGHTS.items():
        unused = theirs.startswith("norm.") and "mlp.fc1.weight" not in params
        if theirs in params and not unused:  # timm keeps `norm` without `mlp`
            ours[name] = value(theirs).T if transpose else value(theirs)
    return ours


def _timm_gradients(module):
    grads = {name: p.grad for name, p in module.named_parameters()}
    shadow = type("Grads", (), {})()
    shadow.named_parameters = lambda: grads.items()
    return _timm_weights(shadow)


def _tokens(dtype):
    rng = np.random.default_rng(1)
    return rng.normal(size=(len(LENGTHS), max(LENGTHS), CHANNELS)).astype(dtype)


def _relative_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("mlp_ratio", [0.0, 4.0])
@pytest.mark.parametrize("latent_len", [1, 2])
def test_matches_timm(latent_len, mlp_ratio, qk_norm, masked, dtype):
    timm = _timm_module(latent_len, mlp_ratio, qk_norm, dtype)
    ours = kgp.GlobalMultiHeadAttentionPooling(
        num_heads=HEADS,
        latent_len=latent_len,
        mlp_ratio=mlp_ratio,
        qk_norm=qk_norm,
        dtype=dtype,
    )
    x = _tokens(dtype)
    ours.build(x.shape)
    theirs_weights = _timm_weights(timm)
    assert {w.name for w in ours.weights} == set(theirs_weights)
    for weight in ours.weights:
        weight.assign(theirs_weights[weight.name])

    mask, attn_mask = None, None
    if masked:
        mask = np.arange(x.shape[1])[None] < np.array(LENGTHS)[:, None]
        additive = np.where(mask, 0.0, -np.inf).astype(dtype)
        attn_mask = torch.from_numpy(additive[:, None, None, :])
    dy = np.random.default_rng(2).normal(size=(len(x), CHANNELS)).astype(dtype)

    xt = torch.tensor(x, requires_grad=True)
    out = timm(xt, attn_mask=attn_mask)
    torch.sum(out * torch.from_numpy(dy)).backward()
    expected = {"output": out.detach().numpy(), "x": xt.grad.numpy()}
    expected.update(_timm_gradients(timm))

    got = {"output": keras.ops.convert_to_numpy(ours(x, mask=mask))}
    grads = gradients(ours, x, dy, mask)
    got["x"] = grads[0]
    got.update(
        {w.name: g for w, g in zip(ours.trainable_weights, grads[1:], strict=True)}
    )
    tolerance = TOLERANCE[dtype]
    # Each adds the same to every logit of a query, which the softmax cancels:
    # both gradients are rounding errors.
    cancelled = {"key_norm_beta"} if qk_norm else {"key_bias"}
    for name, value in got.items():
        if name in cancelled:
            scale = np.max(np.abs(expected["key_kernel"]))
            assert np.max(np.abs(value)) <= tolerance * scale, name
            assert np.max(np.abs(expected[name])) <= tolerance * scale, name
            continue
        error = _relative_error(value, expected[name])
        assert error <= tolerance, f"{name}: relative error {error:.3g}"
