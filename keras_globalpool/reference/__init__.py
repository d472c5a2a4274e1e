"""Pure-NumPy forward and backward passes of every pooling: the test oracle.

Written with NumPy only, independently of Keras and of `keras_globalpool.pool_ops`,
so that the layers can be checked against it. Every function takes `x` of rank
3, 4 or 5 (a 1D, 2D or 3D feature map with batch and channel axes) and

- `data_format`: `"channels_last"` (`(batch, *spatial, channels)`) or
  `"channels_first"` (`(batch, channels, *spatial)`);
- `keepdims`: keep the spatial axes with size 1 in the pooled output;
- `mask`: optional boolean array of shape `(batch, *spatial)`, True where a
  position is valid. Masked positions never change a result, whatever they
  hold (NaN and inf included), and a sample with no valid position pools to
  zeros.

Everything is computed and returned in float64.

Backward convention: each `*_grad(x, dy, ...)` function takes `dy`, the
gradient of a scalar loss with respect to the pooled output (shaped like that
output), and returns a dict keyed by the name of each differentiable argument:
`{"x": dx}` for `avg_pool_grad`, `max_pool_grad` and `mixed_pool_grad` (plus
`"gate"` when `mode="learned"`), `{"x", "p"}` for `gem_pool_grad`, `{"x", "r"}`
for `lse_pool_grad`, and `{"x", "hidden_kernel", "hidden_bias", "score_kernel",
"score_bias"}` for `attention_pool_grad`, and `{"x", "hidden_kernel",
"hidden_bias", "score_kernel"}` plus `"gate_kernel"` and `"gate_bias"` when
gated for `gated_attention_pool_grad`, and `{"x"}` plus `"kernel"` and `"bias"`
with a projection for `covariance_pool_grad` (which, like `covariance_pool`,
has no `keepdims`), and `{"x", "kernel"}` for `csra_grad` (no `keepdims`
either). Each gradient has its argument's shape; masked positions of `x` get
zero gradient.

Where the function is not differentiable, the gradient follows TensorFlow:

- max: positions tied for the maximum share the gradient equally;
- GeM: `max(x, eps)` passes the gradient to `x` where `x >= eps`, else 0;
- learned gate: `clip(gate, 0, 1)` passes the gradient where
  `0 <= gate <= 1`, else 0;
- ReLU in the attention branch: the gradient at exactly 0 is 0.

One module per family, all imported here: `channel_pools` (avg, max, mixed,
GeM, LSE), `attention` (attention and gated attention), `covariance`,
`multi_head` (MAP), `sim_pool` and `csra`; `layout` and `normalization` hold what
they share.

Example:

>>> from keras_globalpool.reference import avg_pool, max_pool_grad
>>> x = np.arange(12.0).reshape(1, 2, 2, 3)
>>> avg_pool(x)
array([[4.5, 5.5, 6.5]])
>>> max_pool_grad(x, np.ones((1, 3)))["x"].shape
(1, 2, 2, 3)
"""

from keras_globalpool.reference.attention import (
    attention_pool,
    attention_pool_grad,
    gated_attention_pool,
    gated_attention_pool_grad,
)
from keras_globalpool.reference.channel_pools import (
    avg_pool,
    avg_pool_grad,
    gem_pool,
    gem_pool_grad,
    lse_pool,
    lse_pool_grad,
    max_pool,
    max_pool_grad,
    mixed_pool,
    mixed_pool_grad,
)
from keras_globalpool.reference.covariance import (
    covariance_pool,
    covariance_pool_grad,
)
from keras_globalpool.reference.csra import (
    CSRA_TEMPERATURES,
    csra,
    csra_grad,
)
from keras_globalpool.reference.layout import (
    DATA_FORMATS,
    MIXED_MODES,
    NORMALIZATIONS,
)
from keras_globalpool.reference.multi_head import (
    multi_head_attention_pool,
    multi_head_attention_pool_grad,
)
from keras_globalpool.reference.normalization import (
    LAYER_NORM_EPSILON,
)
from keras_globalpool.reference.sim_pool import (
    SIM_POOL_SHIFT,
    SIM_POOL_WEIGHTS,
    sim_pool,
    sim_pool_grad,
)

__all__ = [
    "DATA_FORMATS",
    "MIXED_MODES",
    "NORMALIZATIONS",
    "LAYER_NORM_EPSILON",
    "avg_pool",
    "max_pool",
    "mixed_pool",
    "gem_pool",
    "lse_pool",
    "avg_pool_grad",
    "max_pool_grad",
    "mixed_pool_grad",
    "gem_pool_grad",
    "lse_pool_grad",
    "attention_pool",
    "gated_attention_pool",
    "attention_pool_grad",
    "gated_attention_pool_grad",
    "covariance_pool",
    "covariance_pool_grad",
    "CSRA_TEMPERATURES",
    "csra",
    "csra_grad",
    "multi_head_attention_pool",
    "multi_head_attention_pool_grad",
    "SIM_POOL_WEIGHTS",
    "SIM_POOL_SHIFT",
    "sim_pool",
    "sim_pool_grad",
]
