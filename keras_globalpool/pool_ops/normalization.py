"""A layer norm that stays finite over float32's whole range."""

import keras
from keras import ops

from keras_globalpool.pool_ops.reductions import blocked_sum

# A layer norm input beyond the first magnitude is scaled by the second (both
# powers of two) first: the squares of the centred values then stay finite,
# for channel counts up to 2**30.
_NORM_RANGE = {"float32": (2.0**48, 2.0**-80), "float64": (2.0**480, 2.0**-544)}


def layer_norm(x, scale, bias, epsilon=1e-5):
    """torch's `nn.LayerNorm` over the last axis of a float32 or float64 `x`.

    `(x - mean) / sqrt(var + epsilon) * scale + bias`, with the biased
    variance, as torch (and timm) compute it. Two steps keep it accurate
    and finite where the plain formula is not, and change nothing in exact
    arithmetic:

    - the centred values are centred again by their own mean. A float32
      mean is off by a roundoff of the values' size, which the plain
      formula subtracts from every channel: for channels that agree to 6
      digits (`1e4 + 0.01 z`) its normalized values are 5% off (920,000
      unit roundoffs). Twice centred, the error is a few roundoffs of the
      channels' spread (1.5 there; `tests/test_layer_reliability.py`).
    - a position holding a value beyond `2**48` (`2**480` in float64) is
      scaled by `2**-80` (`2**-544`), and `epsilon` by its square: exact,
      so finite inputs up to the dtype's largest value give finite outputs.
      Elsewhere the result is bit-identical to the unscaled one.

    The sums over the channels are `blocked_sum`s.

    Args:
        x: float32 or float64 tensor; its last axis is normalized.
        scale: tensor of shape `(x.shape[-1],)`.
        bias: tensor of shape `(x.shape[-1],)`.
        epsilon: float > 0. Added to the variance.

    Returns:
        The normalized tensor, shaped like `x`.

    Example:

    >>> from keras_globalpool.pool_ops import layer_norm
    >>> x = np.array([[1e6 + 1, 1e6 + 2, 1e6 + 3]], "float32")
    >>> y = layer_norm(x, np.ones(3, "float32"), np.zeros(3, "float32"))
    >>> np.round(keras.ops.convert_to_numpy(y).astype("float64"), 4).tolist()
    [[-1.2247, 0.0, 1.2247]]
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    limit, down = _NORM_RANGE["float64" if dtype == "float64" else "float32"]
    large = ops.any(ops.abs(x) > limit, axis=-1, keepdims=True)
    x = ops.where(large, x * down, x)
    epsilon = ops.where(
        large,
        ops.convert_to_tensor(epsilon * down * down, dtype=x.dtype),
        ops.convert_to_tensor(epsilon, dtype=x.dtype),
    )
    channels = x.shape[-1]
    centred = x - blocked_sum(x, (-1,), keepdims=True) / channels
    centred = centred - blocked_sum(centred, (-1,), keepdims=True) / channels
    variance = blocked_sum(centred * centred, (-1,), keepdims=True) / channels
    denominator = variance + epsilon
    # 0 only where a scaled `epsilon` underflows and the values are all
    # equal: their centred values are 0 too.
    denominator = ops.where(denominator == 0, 1.0, denominator)
    return centred / ops.sqrt(denominator) * scale + bias
