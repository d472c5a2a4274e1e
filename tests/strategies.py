"""Hypothesis profiles and strategies shared by the property-based tests.

Two profiles, both bounded: `"ci"`, loaded when the environment sets `CI`
(as `.ci/run`'s caller does), is derandomized, so every CI run draws the
same examples; `"dev"` draws new examples on every run and keeps failures in
an example database outside the repository. `HYPOTHESIS_PROFILE` picks one
by name. Each test sets its own `max_examples` through `examples()`; the
totals are listed in the README, "Reliability".
"""

import os
import tempfile

import keras
import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from layer_cases import LAYER_CASES, NOT_PER_CHANNEL

import keras_globalpool as kgp
from keras_globalpool.layers.base_kernel_pooling import BaseKernelPooling

_COMMON = {
    "deadline": None,  # the first call of a new shape compiles on jax
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile(
    "dev",
    database=DirectoryBasedExampleDatabase(
        os.path.join(tempfile.gettempdir(), "keras-globalpool-hypothesis")
    ),
    **_COMMON,
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)

# jax compiles each drawn layer for its new shape, many times the cost of
# an example on TensorFlow or torch, so it draws a tenth of the examples
# (at least five per test): TensorFlow and torch draw them all.
EXAMPLES_SCALE = 0.1 if keras.backend.backend() == "jax" else 1.0


def examples(count):
    """The `max_examples` for `count` examples on TensorFlow and torch."""
    return max(5, int(count * EXAMPLES_SCALE))


# Dtype policies: the 16-bit ones compute in float32 and round the output.
POLICIES = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "mixed_float16",
    "mixed_bfloat16",
)
_NUMPY_DTYPES = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float32": np.float32,
    "float64": np.float64,
}
# Unit roundoff of each compute dtype.
ROUNDOFF = {
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float32": 2.0**-24,
    "float64": 2.0**-53,
}
# The smallest normal number of each compute dtype: the backends may flush
# subnormal results to zero (TensorFlow does on CPU), so no test asks for
# accuracy below it.
TINY = {
    "float16": float(np.finfo(np.float16).tiny),
    "bfloat16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).tiny),
    "float32": float(np.finfo(np.float32).tiny),
    "float64": float(np.finfo(np.float64).tiny),
}
# Largest side drawn per rank, so that no map exceeds a few hundred values.
_MAX_SIDE = {3: 9, 4: 5, 5: 3}


def compute_dtype(policy):
    return policy.split("_")[-1]


def reduction_dtype(policy):
    """The dtype the layers reduce in: float32 for 16-bit compute dtypes."""
    return "float64" if compute_dtype(policy) == "float64" else "float32"


def as_seen_by(values, policy):
    """`values` rounded to the policy's compute dtype, held in float32/64.

    The layers cast their input to the compute dtype; rounding first makes
    that cast exact, so the oracle sees exactly what the layer sees. The
    array stays float32 (or float64), which every backend converts.
    """
    dtype = compute_dtype(policy)
    rounded = np.asarray(values, np.float64).astype(_NUMPY_DTYPES[dtype])
    return rounded.astype(np.float64 if dtype == "float64" else np.float32)


def channel_axis(data_format, rank):
    return rank - 1 if data_format == "channels_last" else 1


def to_channels_last(x, data_format):
    """`x` as `(batch, *spatial, channels)`."""
    return np.moveaxis(x, 1, -1) if data_format == "channels_first" else x


@st.composite
def maps(draw, rank=None, min_batch=1, max_batch=3, masked=None):
    """An input description: rank, format, keepdims, shape and a 1D mask.

    Sizes include 1 and odd numbers; the batch may be 1. A mask is drawn
    only for rank 3 (a 1D mask over the steps), and may mask whole rows.

    Returns:
        dict with `rank`, `data_format`, `keepdims`, `shape` and `mask`
        (None or a boolean array of shape `(batch, steps)`).
    """
    rank = draw(st.sampled_from((3, 4, 5))) if rank is None else rank
    data_format = draw(st.sampled_from(("channels_last", "channels_first")))
    batch = draw(st.integers(min_batch, max_batch))
    channels = draw(st.integers(1, 5))
    spatial = tuple(draw(st.integers(1, _MAX_SIDE[rank])) for _ in range(rank - 2))
    if data_format == "channels_last":
        shape = (batch, *spatial, channels)
    else:
        shape = (batch, channels, *spatial)
    mask = None
    if rank == 3 and (masked is True or (masked is None and draw(st.booleans()))):
        bits = draw(
            st.lists(
                st.booleans(), min_size=batch * spatial[0], max_size=batch * spatial[0]
            )
        )
        mask = np.array(bits, dtype=bool).reshape(batch, spatial[0])
    return {
        "rank": rank,
        "data_format": data_format,
        "keepdims": draw(st.booleans()),
        "shape": shape,
        "mask": mask,
    }


def values(draw, shape, low=-100.0, high=100.0):
    """A float64 array of `shape`, drawn value by value (so it shrinks well).

    Hypothesis favours edge values: zeros, the bounds, repeats (ties).
    """
    size = int(np.prod(shape))
    flat = draw(
        st.lists(
            st.floats(low, high, allow_nan=False, allow_infinity=False),
            min_size=size,
            max_size=size,
        )
    )
    return np.array(flat, dtype=np.float64).reshape(shape)


def built_layer(draw, case, policy, spec):
    """A built layer of `case` with drawn weights moved off their defaults."""
    name, case_kwargs = LAYER_CASES[case]
    kwargs = {**case_kwargs, "dtype": policy, "data_format": spec["data_format"]}
    if case not in NOT_PER_CHANNEL:  # which have no keepdims
        kwargs["keepdims"] = spec["keepdims"]
    if name == "covariance":  # None: no projection, no weights
        kwargs["dim"] = draw(st.sampled_from([None, 1, 2, 3]))
    if name == "attention":
        kwargs["reduction"] = draw(st.integers(1, 4))
    if name == "gated_attention":
        kwargs["units"] = draw(st.integers(1, 4))
    if name == "map":  # heads of one channel to all of them
        channels = spec["shape"][channel_axis(spec["data_format"], spec["rank"])]
        heads = [h for h in range(1, channels + 1) if channels % h == 0]
        kwargs["num_heads"] = draw(st.sampled_from(heads))
        kwargs["latent_len"] = draw(st.integers(1, 3))
        kwargs["mlp_ratio"] = draw(st.sampled_from([0.0, 1.0, 2.0]))
        kwargs["qk_norm"] = draw(st.booleans())
    if name == "simpool":  # heads of one channel to all of them
        channels = spec["shape"][channel_axis(spec["data_format"], spec["rank"])]
        divisors = [h for h in range(1, channels + 1) if channels % h == 0]
        kwargs["num_heads"] = draw(st.sampled_from(divisors))
        if kwargs.get("gamma") is not None:
            kwargs["gamma"] = draw(st.floats(0.5, 4.0))
    if name == "csra":  # every temperature setting of the paper
        kwargs["num_heads"] = draw(
            st.sampled_from(sorted(kgp.pool_ops.CSRA_TEMPERATURES))
        )
        kwargs["lam"] = draw(st.floats(0.05, 2.0))
    takes_initializer = issubclass(kgp.POOLINGS[name], BaseKernelPooling)
    if takes_initializer and keras.backend.backend() == "jax":
        # The weights are drawn below; a random initializer would compile its
        # generator for each new kernel shape on jax, at a second apiece.
        kwargs["kernel_initializer"] = "zeros"
    layer = kgp.get(name, **kwargs)
    layer.build(spec["shape"])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for weight in layer.weights:
        size = int(np.prod(weight.shape))
        if weight.name == "gate":  # outside [0, 1] too: the layer clips it
            new = np.array(
                draw(st.lists(st.floats(-0.5, 1.5), min_size=size, max_size=size))
            )
        elif weight.name == "p":
            new = np.asarray(draw(st.floats(0.5, 8.0)))
        elif weight.name == "r":  # from near-average to near-max pooling
            new = np.asarray(draw(st.floats(0.01, 100.0)))
        else:
            new = rng.normal(scale=0.5, size=tuple(weight.shape))
        weight.assign(new.astype(keras.backend.standardize_dtype(weight.dtype)))
    return layer
