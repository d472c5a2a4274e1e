"""Maps with no position to pool (README, "Reliability").

- A spatial size of 0 in a symbolic shape is a `ValueError` when the output
  shape is computed (`keras.Input`, `compute_output_shape`): the mistake
  shows where the model is defined.
- At run time, a map with no position pools to zeros: a fully masked
  sequence, an eager call on an empty map, and a map whose size, unknown
  when the model was defined, turns out to be 0. Never NaN, never -inf, and
  gradients stay finite.
"""

import keras
import numpy as np
import pytest
from layer_cases import (
    ATTENTION_CASES,
    DATA_FORMATS,
    LAYER_CASES,
    NOT_PER_CHANNEL,
    RANKS,
    call,
    gradients,
    input_shape,
    keepdims_kwargs,
    make_layer,
    pooled_size,
    random_input,
    scores_per_query,
)

CASES = sorted(LAYER_CASES)


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(tensor, "float32")))


def _out_channels(case, channels):
    return pooled_size(case, channels)


def _empty_shapes():
    for rank in RANKS:
        for data_format in DATA_FORMATS:
            shape = list(input_shape(rank, data_format))
            spatial_axis = 1 if data_format == "channels_last" else 2
            shape[spatial_axis + rank - 3] = 0  # the last spatial axis
            yield rank, data_format, tuple(shape)


EMPTY_SHAPES = list(_empty_shapes())


class TestStaticSizeZero:
    @pytest.mark.parametrize("rank, data_format, shape", EMPTY_SHAPES)
    @pytest.mark.parametrize("case", CASES)
    def test_shape_inference_raises(self, case, rank, data_format, shape):
        layer = make_layer(case, data_format=data_format)
        with pytest.raises(ValueError, match=r"no position.*Received: input_shape="):
            layer.compute_output_shape(shape)

    @pytest.mark.parametrize("case", CASES)
    def test_functional_model_with_a_zero_axis_raises(self, case):
        inputs = keras.Input((5, 0, 4))
        with pytest.raises(ValueError, match=r"no position.*Received: input_shape="):
            make_layer(case)(inputs)

    @pytest.mark.parametrize("case", CASES)
    def test_eager_call_of_a_new_layer_gives_zeros(self, case):
        # Weightless layers are built at creation, as Keras's own are, so an
        # eager call has no build step to refuse in: every layer pools an
        # empty map to zeros alike.
        out = make_layer(case)(np.zeros((2, 0, 4), "float32"))
        np.testing.assert_array_equal(_numpy(out), 0.0)
        assert out.shape == (2, _out_channels(case, 4))

    def test_message_names_the_layer_and_the_shape(self):
        layer = make_layer("gem", data_format="channels_first")
        with pytest.raises(ValueError) as info:
            layer.compute_output_shape((2, 3, 4, 0))
        message = str(info.value)
        assert "`GlobalGeMPooling`" in message
        assert "Received: input_shape=(2, 3, 4, 0)" in message


class TestRunTimeEmpty:
    @pytest.mark.parametrize("dtype", ["float32", "mixed_float16", "float64"])
    @pytest.mark.parametrize("case", CASES)
    def test_fully_masked_batch_gives_zeros(self, case, dtype):
        x = np.full((3, 4, 2), 5.0, "float32")
        mask = np.zeros((3, 4), bool)
        layer = make_layer(case, dtype=dtype)
        layer.build(x.shape)
        out = call(layer, x, mask=mask)
        np.testing.assert_array_equal(_numpy(out), 0.0)
        assert out.shape == (3, _out_channels(case, 2))
        for grad in gradients(layer, x, np.ones(out.shape), mask):
            assert np.all(np.isfinite(grad))

    @pytest.mark.parametrize("case", ATTENTION_CASES)
    def test_attention_scores_of_a_fully_masked_sample_are_zero(self, case):
        x = np.ones((2, 5, 4), "float32")
        mask = np.array([[False] * 5, [True, True, False, False, False]])
        layer = make_layer(case)
        _, scores = layer(x, mask=mask, return_attention_scores=True)
        scores = scores_per_query(layer, _numpy(scores))
        expected = np.array([[0] * 5, [0.5, 0.5, 0, 0, 0]])[:, None, :]
        np.testing.assert_allclose(scores, np.broadcast_to(expected, scores.shape))

    @pytest.mark.parametrize("case", CASES)
    def test_embedding_of_padding_only_sequences(self, case):
        """Embedding(mask_zero=True) with sequences that are all padding."""
        # Seeded: with some draws a ReLU'd projection (covariance) zeroes the
        # real sample's two tokens alike, and it pools to zeros by right.
        keras.utils.set_random_seed(0)
        inputs = keras.Input((None,), dtype="int32")
        features = keras.layers.Embedding(5, 4, mask_zero=True)(inputs)
        model = keras.Model(inputs, make_layer(case)(features))
        tokens = np.array([[0, 0, 0], [1, 2, 0], [0, 0, 0]])
        out = _numpy(model(tokens))
        np.testing.assert_array_equal(out[[0, 2]], 0.0)
        assert np.all(np.isfinite(out)) and np.any(out[1] != 0)

    @pytest.mark.parametrize("keepdims", [False, True])
    @pytest.mark.parametrize("case", CASES)
    def test_zero_size_map_at_run_time_gives_zeros(self, case, keepdims):
        """A layer built for unknown sizes, fed a map that has none."""
        layer = make_layer(case, **keepdims_kwargs(case, keepdims))
        layer.build((None, None, None, 4))
        out = layer(np.zeros((2, 4, 0, 4), "float32"))
        channels = _out_channels(case, 4)
        expected = (2, 1, 1, channels) if keepdims else (2, channels)
        assert tuple(out.shape) == expected
        np.testing.assert_array_equal(_numpy(out), 0.0)

    @pytest.mark.parametrize("case", CASES)
    def test_zero_size_map_through_predict(self, case):
        inputs = keras.Input((None, 4))
        model = keras.Model(inputs, make_layer(case)(inputs))
        out = model.predict(np.zeros((2, 0, 4), "float32"), verbose=0)
        np.testing.assert_array_equal(out, 0.0)
        assert out.shape == (2, _out_channels(case, 4))

    @pytest.mark.parametrize("case", CASES)
    def test_zero_size_map_in_a_tf_function(self, case):
        """The size is only known when the graph runs (TensorFlow only)."""
        if keras.backend.backend() != "tensorflow":
            pytest.skip("a graph with unknown sizes is TensorFlow's")
        import tensorflow as tf

        layer = make_layer(case)
        layer.build((None, None, None, 4))
        pool = tf.function(
            layer, input_signature=[tf.TensorSpec((None, None, None, 4), "float32")]
        )
        # Not constant: a covariance pooling gives zeros for a constant map,
        # and may for single entries of its output.
        nonzero = np.any if case in NOT_PER_CHANNEL else np.all
        for shape in [(2, 0, 4, 4), (2, 3, 0, 4), (1, 2, 2, 4)]:
            out = pool(tf.constant(random_input(shape, dtype="float32")))
            if 0 in shape:
                np.testing.assert_array_equal(_numpy(out), 0.0)
            else:
                assert nonzero(_numpy(out) != 0)
