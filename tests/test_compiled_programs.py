"""On jax, avg and max compile to the program Keras's own layers compile to.

So on jax they cost what Keras's layers cost, by construction, in the
forward pass and in the gradient: section 6 of `docs/benchmarks.md` times
them, and its ratios scatter around 1.00 as its Keras-against-Keras control
does. The programs are XLA's optimized HLO, compared instruction by
instruction with names and source locations left out.
"""

import re

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

pytestmark = pytest.mark.jax_only

KERAS_LAYERS = {
    "avg": keras.layers.GlobalAveragePooling2D,
    "max": keras.layers.GlobalMaxPooling2D,
}
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%\S+ = ")
_NAME = re.compile(r"%[\w.\-]+")
_ATTRIBUTES = re.compile(r", (metadata|frontend_attributes|backend_config)=\{.*")


def _program(function, x):
    """The instructions of `function`'s optimized HLO, without names."""
    import jax

    text = jax.jit(function).lower(x).compile().as_text()
    return sorted(
        _ATTRIBUTES.sub("", _NAME.sub("%", line.strip()))
        for line in text.splitlines()
        if _INSTRUCTION.match(line)
    )


def _gradient(layer):
    import jax

    return jax.grad(lambda x: keras.ops.sum(keras.ops.cast(layer(x), "float32")))


# 7x7 is summed in one reduction; 28x28 axis by axis, which XLA merges.
@pytest.mark.parametrize("shape", [(2, 7, 7, 16), (2, 28, 28, 8)])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["avg", "max"])
@pytest.mark.parametrize("step", ["forward", "gradient"])
def test_same_program_as_keras(shape, policy, name, step):
    ours = kgp.get(name, dtype=policy)
    theirs = KERAS_LAYERS[name](dtype=policy)
    dtype = "float32" if policy == "float32" else "bfloat16"
    x = keras.ops.convert_to_tensor(np.zeros(shape, "float32"), dtype)
    if step == "gradient":
        ours, theirs = _gradient(ours), _gradient(theirs)
    assert _program(ours, x) == _program(theirs, x)


def test_programs_tell_layers_apart():
    # The comparison is not blind: mixed is not avg.
    x = keras.ops.zeros((2, 7, 7, 16))
    assert _program(kgp.get("mixed"), x) != _program(KERAS_LAYERS["avg"](), x)
