"""`ValueRange`: keeps a trained weight inside the range where it has meaning."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_globalpool")
class ValueRange(keras.constraints.Constraint):
    """Clamps every value of a weight to `[min_value, max_value]`.

    Keras applies a weight's constraint after each optimizer step, so however
    large a step is, the weight ends it inside the range, where its gradient
    is the layer's own (a clamp inside `call` would cut the gradient to 0
    instead, and a weight pushed past it would never move again). GeM's `p`
    uses it with `min_value=1e-3`, mixed pooling's gate with `[0, 1]`. NaN
    stays NaN: a broken step is not hidden.

    Args:
        min_value: float or None. The smallest value kept. Defaults to
            `None` (no lower bound).
        max_value: float or None. The largest value kept. Defaults to
            `None` (no upper bound).

    Example:

    >>> constraint = kgp.layers.ValueRange(min_value=0.0, max_value=1.0)
    >>> w = np.array([-5.0, 0.25, 7.0], "float32")
    >>> keras.ops.convert_to_numpy(constraint(w)).tolist()
    [0.0, 0.25, 1.0]
    """

    def __init__(self, min_value=None, max_value=None):
        self.min_value = min_value
        self.max_value = max_value

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        # `where`, not `clip` or `maximum`: Keras's torch versions compute
        # float64 in float32, and NaN compares False, so it stays NaN.
        if self.min_value is not None:
            low = ops.cast(self.min_value, w.dtype)
            w = ops.where(w < low, low, w)
        if self.max_value is not None:
            high = ops.cast(self.max_value, w.dtype)
            w = ops.where(w > high, high, w)
        return w

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}
