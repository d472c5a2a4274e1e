"""Keras's own layer test harness (`keras.src.testing.TestCase`) on every layer.

It runs through a `TestCase` subclass, so Keras's `setUp` clears the
session before each case. The harness builds, calls, saves, reloads,
trains and runs each layer under mixed precision; for layers without
weights it also asserts, as it does for Keras's poolings, that they are
built when created.
"""

from absl.testing import parameterized
from keras.src import testing
from layer_cases import (
    DATA_FORMATS,
    LAYER_CASES,
    RANKS,
    TRAINABLE_WEIGHTS,
    input_shape,
    pooled_size,
)

import keras_globalpool as kgp


def _output_shape(case, shape, data_format):
    channel_axis = len(shape) - 1 if data_format == "channels_last" else 1
    return (shape[0], pooled_size(case, shape[channel_axis]))


def _cases():
    return [
        {
            "testcase_name": f"{case}_{rank}d_{data_format}",
            "case": case,
            "rank": rank,
            "data_format": data_format,
        }
        for case in sorted(LAYER_CASES)
        for rank in RANKS
        for data_format in DATA_FORMATS
    ]


class KerasHarnessTest(testing.TestCase):
    @parameterized.named_parameters(_cases())
    def test_run_layer_test(self, case, rank, data_format):
        name, kwargs = LAYER_CASES[case]
        shape = input_shape(rank, data_format)
        weights = TRAINABLE_WEIGHTS.get(case, 0)
        self.run_layer_test(
            kgp.POOLINGS[name],
            init_kwargs={**kwargs, "data_format": data_format},
            input_shape=shape,
            expected_output_shape=_output_shape(case, shape, data_format),
            expected_num_trainable_weights=weights,
            expected_num_non_trainable_weights=0,
            expected_num_losses=0,
            supports_masking=True,
            assert_built_after_instantiation=weights == 0,
        )
