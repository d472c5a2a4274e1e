"""Backend-agnostic global-pooling math, written with `keras.ops` only.

Each function reduces `x` over the spatial `axes`. `mask`, when given, is a
boolean tensor broadcastable to `x` (a 1 on the channel axis) that marks the
valid positions; masked positions never change the result, whatever they hold,
and a sample with no valid position pools to zeros, as does a map with no
position at all (a spatial size of 0). A NaN at a valid position propagates as
in NumPy's `mean` and `max`. A batch of no sample pools to a batch of no
sample. The layers cast to float32 before calling these functions when their
compute dtype is 16-bit.

Accuracy: every sum over positions (the mean, GeM's sum of powers,
attention's weights and weighted sum, LSE's sums of exponentials, the
covariance's Gram matrix) is a
`blocked_sum`, in which no partial sum adds more than `SUM_BLOCK` (64)
terms. A plain float32 reduction over
`n` positions can be off by about `n` units of roundoff: TensorFlow's CPU
reduction of a `channels_last` map loses 1% at 2**20 positions. Blocked, the
rounding error is at most `h * u * sum(|x|)` (to first order, `u = 2**-24` in
float32), where `h <= 63` per level of partial sums and there are
`ceil(log64(size))` levels per spatial axis (at most 4 for 2**24 positions),
so the bound does not grow with the map beyond that handful of levels. For
inputs of one sign that is a relative error of at most `h * u`; measured on
TensorFlow, jax and torch, eager and compiled, the relative error of a mean
stays below `32 * u` (1.9e-6) at every size from 49 to 2**20 positions, which
`tests/test_layer_reliability.py` checks. The max is exact.

One module per concept, all imported here: `reductions` (the blocked sums
and masks every pooling builds on), `channel_pools` (avg, max, mixed, GeM,
LSE), `attention` (scores, weighted pooling, gated-attention logits),
`covariance`, `csra` (class-specific residual attention), `normalization`
(layer norm) and `sim_pool`.

Example:

>>> from keras_globalpool.pool_ops import global_avg_pool
>>> x = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
>>> keras.ops.convert_to_numpy(global_avg_pool(x, axes=(1, 2))).tolist()
[[3.0, 4.0]]
"""

from keras_globalpool.pool_ops.attention import (
    gated_attention_logits,
    global_weighted_pool,
    normalize_scores,
    softmax_cancelled,
)
from keras_globalpool.pool_ops.channel_pools import (
    global_avg_max_pool,
    global_avg_pool,
    global_gem_pool,
    global_lse_pool,
    global_max_pool,
)
from keras_globalpool.pool_ops.covariance import (
    blocked_gram,
    global_covariance_pool,
    iterative_sqrtm,
    upper_triangle,
)
from keras_globalpool.pool_ops.csra import (
    CSRA_TEMPERATURES,
    csra_logits,
    csra_scores,
)
from keras_globalpool.pool_ops.normalization import (
    layer_norm,
)
from keras_globalpool.pool_ops.reductions import (
    SUM_BLOCK,
    blocked_sum,
    count_valid,
)
from keras_globalpool.pool_ops.sim_pool import (
    SIM_POOL_WEIGHTS,
    global_power_weighted_pool,
    global_sim_pool,
)

__all__ = [
    "SUM_BLOCK",
    "blocked_sum",
    "count_valid",
    "global_avg_pool",
    "global_max_pool",
    "global_avg_max_pool",
    "global_gem_pool",
    "global_lse_pool",
    "normalize_scores",
    "softmax_cancelled",
    "global_weighted_pool",
    "gated_attention_logits",
    "blocked_gram",
    "iterative_sqrtm",
    "upper_triangle",
    "global_covariance_pool",
    "CSRA_TEMPERATURES",
    "csra_scores",
    "csra_logits",
    "layer_norm",
    "global_power_weighted_pool",
    "SIM_POOL_WEIGHTS",
    "global_sim_pool",
]
