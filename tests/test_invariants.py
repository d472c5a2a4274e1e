"""Invariants of every layer, on drawn inputs: batch, permutation, determinism,
bounds.

Each invariant holds exactly in real arithmetic; the tolerances allow the
rounding of a different summation order only (float32 and float64 inputs).
"""

import keras
import numpy as np
import pytest
import strategies
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_cases import (
    ATTENTION_CASES,
    LAYER_CASES,
    NOT_PER_CHANNEL,
    call,
    scores_per_query,
    sim_pool_values,
)

import keras_globalpool as kgp

MAX_EXAMPLES = strategies.examples(40)  # per layer case and invariant
INVARIANT_POLICIES = ("float32", "float64")


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def _draw(data, case, **map_kwargs):
    policy = data.draw(st.sampled_from(INVARIANT_POLICIES), label="policy")
    spec = data.draw(strategies.maps(**map_kwargs), label="spec")
    layer = strategies.built_layer(data.draw, case, policy, spec)
    x = strategies.as_seen_by(strategies.values(data.draw, spec["shape"]), policy)
    return layer, x, spec["mask"], policy


def _close(actual, expected, policy, x):
    eps = strategies.ROUNDOFF[policy]
    scale = max(float(np.max(np.abs(x), initial=0.0)), 1.0)
    atol = 256 * eps * scale + strategies.TINY[policy]
    np.testing.assert_allclose(actual, expected, rtol=256 * eps, atol=atol)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@settings(max_examples=MAX_EXAMPLES)
@given(data=st.data())
def test_batch_invariance(case, data):
    """A sample's output does not depend on the other samples of its batch."""
    layer, x, mask, policy = _draw(data, case, min_batch=2, max_batch=4)
    together = _numpy(call(layer, x, mask=mask))
    for i in range(x.shape[0]):
        alone = _numpy(
            call(layer, x[i : i + 1], mask=None if mask is None else mask[i : i + 1])
        )
        _close(together[i : i + 1], alone, policy, x)


def _permute_positions(x, data_format, permutation):
    """`x` with its spatial positions (flattened) reordered by `permutation`."""
    last = strategies.to_channels_last(x, data_format)
    flat = last.reshape(last.shape[0], -1, last.shape[-1])[:, permutation]
    moved = flat.reshape(last.shape)
    return np.moveaxis(moved, -1, 1) if data_format == "channels_first" else moved


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@settings(max_examples=MAX_EXAMPLES)
@given(data=st.data())
def test_permutation_invariance(case, data):
    """Shuffling the positions changes no output; attention scores move along."""
    layer, x, mask, policy = _draw(data, case)
    fmt = layer.data_format
    spatial = strategies.to_channels_last(x, fmt).shape[1:-1]
    positions = int(np.prod(spatial))
    permutation = np.array(data.draw(st.permutations(range(positions))))
    x_perm = _permute_positions(x, fmt, permutation)
    mask_perm = None if mask is None else mask[:, permutation]

    if case in ATTENTION_CASES:
        out, scores = call(layer, x, mask=mask, return_attention_scores=True)
        out_p, scores_p = call(
            layer, x_perm, mask=mask_perm, return_attention_scores=True
        )
        scores = scores_per_query(layer, _numpy(scores))[..., permutation]
        _close(scores_per_query(layer, _numpy(scores_p)), scores, policy, 1.0)
    else:
        out, out_p = call(layer, x, mask=mask), call(layer, x_perm, mask=mask_perm)
    _close(_numpy(out_p), _numpy(out), policy, x)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@settings(max_examples=MAX_EXAMPLES)
@given(data=st.data())
def test_determinism(case, data):
    """The same input gives bit-identical outputs, call after call, and from a
    layer rebuilt from its config and weights."""
    layer, x, mask, _ = _draw(data, case)
    first = _numpy(call(layer, x, mask=mask))
    np.testing.assert_array_equal(_numpy(call(layer, x, mask=mask)), first)
    clone = type(layer).from_config(layer.get_config())
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(_numpy(call(clone, x, mask=mask)), first)


def _valid_channel_bounds(x, data_format, mask):
    """Per sample and channel, the min and max over the valid positions."""
    last = strategies.to_channels_last(x, data_format)
    flat = last.reshape(last.shape[0], -1, last.shape[-1])
    valid = np.ones(flat.shape[:2], bool) if mask is None else mask.reshape(len(x), -1)
    any_valid = valid.any(axis=1)
    low = np.where(valid[..., None], flat, np.inf).min(axis=1)
    high = np.where(valid[..., None], flat, -np.inf).max(axis=1)
    low = np.where(any_valid[:, None], low, 0.0)
    return low, np.where(any_valid[:, None], high, 0.0), any_valid


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@settings(max_examples=MAX_EXAMPLES)
@given(data=st.data())
def test_output_within_channel_bounds(case, data):
    """Each output lies between its channel's min and max over valid positions.

    GeM pools `max(x, eps)`, so its bounds are those of the clamped map. For
    mixed `"concat"`, the `[avg, max]` halves are each checked against the
    channel's bounds. SimPool pools the layer-normalized map, and with
    `gamma` that map shifted by its minimum plus 1e-6: its bounds are those.
    A fully masked sample gives zeros (test_empty_inputs).
    """
    if case in NOT_PER_CHANNEL:
        pytest.skip(f"{case!r} pools no value per channel to bound")
    if case == "map":
        pytest.skip("'map' projects and mixes the channels: nothing bounds them")
    layer, x, mask, policy = _draw(data, case)
    if case == "gem":
        x_bounds = np.maximum(x, layer.eps)
    elif isinstance(layer, kgp.GlobalSimPooling):
        x_bounds = sim_pool_values(layer, x)
        if layer.data_format == "channels_first":
            x_bounds = np.moveaxis(x_bounds, -1, 1)
    else:
        x_bounds = x
    low, high, any_valid = _valid_channel_bounds(x_bounds, layer.data_format, mask)
    if getattr(layer, "gamma", None) is not None:  # SimPool's power mean
        low, high = np.full_like(low, 1e-6), high - low + 1e-6
    out = _numpy(call(layer, x, mask=mask)).reshape(x.shape[0], -1)
    if case == "mixed":  # [avg, max] along channels: both halves are bounded
        low, high = np.concatenate([low, low], 1), np.concatenate([high, high], 1)
    scale = np.maximum(np.abs(low), np.abs(high))
    if isinstance(layer, kgp.GlobalSimPooling):
        # A layer-normalized value near 0 is the difference of values of the
        # map's scale: its roundoff is of that scale, not of its own.
        scale = np.maximum(scale, np.max(np.abs(x_bounds)))
    slack = 64 * strategies.ROUNDOFF[policy] * scale
    slack += strategies.TINY[policy]
    assert np.all((out >= low - slack)[any_valid]), (out, low)
    assert np.all((out <= high + slack)[any_valid]), (out, high)
    np.testing.assert_array_equal(out[~any_valid], 0.0)
