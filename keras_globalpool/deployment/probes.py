"""Inputs that exercise an exported model: masks, padding, other lengths."""

import keras
import numpy as np

from keras_globalpool.inputs import input_embedding

# Spatial sizes tried where the model's are free.
_FREE_SIZES = (32, 24)


def probe_batches(model, seed=0):
    """Batches to compare an export with Keras on, one per input length.

    A token model (its input feeds an `Embedding`) gets ids in its
    vocabulary with a partly padded and a fully padded row (id 0, masked
    under `mask_zero=True`); other models get values in 0-255, as raw
    images. Each free (`None`) axis but the batch is tried at two sizes.

    Args:
        model: a `keras.Model` with one input.
        seed: int. The random seed.

    Returns:
        list of NumPy arrays of the input's dtype.

    Example:

    >>> model = keras.Sequential([keras.Input((None, 3)), kgp.GlobalMaxPooling()])
    >>> [batch.shape for batch in probe_batches(model)]
    [(3, 32, 3), (3, 24, 3)]
    """
    rng = np.random.default_rng(seed)
    spec = model.inputs[0]
    dtype = keras.backend.standardize_dtype(spec.dtype)
    free = any(size is None for size in spec.shape[1:])
    embedding = input_embedding(model)
    batches = []
    for size in _FREE_SIZES if free else _FREE_SIZES[:1]:
        shape = (3, *(size if dim is None else dim for dim in spec.shape[1:]))
        if embedding is not None:
            batch = rng.integers(1, embedding.input_dim, shape)
            batch[1, shape[1] // 2 :] = 0
            batch[2] = 0
        else:
            batch = rng.uniform(0, 255, shape)
        batches.append(batch.astype(dtype))
    return batches
