"""Masked, blocked reductions over positions, which every pooling builds on."""

import math

from keras import ops

# The most terms a partial sum adds: see "Accuracy" in the package docstring.
# Maps of at most this many positions (7x7, 8x8) are summed in one reduction.
SUM_BLOCK = 64


# Folds an axis of a size unknown until run time gets at most: axes of up to
# 64**4 = 2**24 positions stay within the bound.
_UNKNOWN_SIZE_FOLDS = 3


# Each fold's sums are scaled by this power of two, and the next level's
# sum scaled back: exact, and it keeps XLA (jax, `jit_compile=True`) from
# merging the levels back into one long reduction, which it otherwise does
# (`reduce(reduce(x))` becomes one reduce, 20 to 80 units of roundoff off at
# 2**16 positions).
_SCALE = 2.0**-6


_UNSCALE = 2.0**6


def _no_elements(x):
    """Whether an axis of `x` has a static size of 0: nothing to pool.

    A spatial axis of size 0 pools to zeros; a batch of size 0 to an empty
    batch. Keras's `max` refuses such tensors on TensorFlow (eagerly) and
    torch, so they never reach it.
    """
    return 0 in tuple(x.shape)


def blocked_sum(x, axes, keepdims=False):
    """Sum over `axes` whose rounding error does not grow with their size.

    A map of at most `SUM_BLOCK` positions is summed in one reduction.
    Larger ones are summed one axis at a time, and an axis longer than
    `SUM_BLOCK` is first folded: each run of up to 64 consecutive positions
    is summed, then the run sums, and so on. The folds reshape the axis
    (free) when its size has a divisor between 16 and 64, and otherwise pad
    it with zeros to a multiple of 64. An axis whose size is known only at
    run time is folded when it turns out longer than 64.

    Args:
        x: tensor to be summed.
        axes: tuple of int. The axes to sum over.
        keepdims: bool. Keep the summed axes with size 1.

    Returns:
        The sum, in `x`'s dtype.

    Example:

    >>> from keras_globalpool.pool_ops import blocked_sum
    >>> x = np.full((1, 2**20, 1), 100.5, "float32")
    >>> float(blocked_sum(x, axes=(1,))[0, 0]) == 100.5 * 2**20
    True
    """
    axes = tuple(sorted(axis % len(x.shape) for axis in axes))
    sizes = [x.shape[axis] for axis in axes]
    if None not in sizes and math.prod(sizes) <= SUM_BLOCK:
        return ops.sum(x, axis=axes, keepdims=keepdims)
    for axis in axes:
        x = _sum_axis(x, axis, _UNKNOWN_SIZE_FOLDS)
    return x if keepdims else ops.squeeze(x, axis=axes)


def _sum_axis(x, axis, folds):
    """`x` summed over `axis` (kept with size 1), folded where it is long."""
    size = x.shape[axis]
    if size is not None:
        if size <= SUM_BLOCK:
            return ops.sum(x, axis=axis, keepdims=True)
        return _sum_axis(_fold(x, axis, _block_size(size)), axis, folds) * _UNSCALE
    if folds == 0:
        return ops.sum(x, axis=axis, keepdims=True)
    return ops.cond(
        ops.shape(x)[axis] <= SUM_BLOCK,
        lambda: ops.sum(x, axis=axis, keepdims=True),
        lambda: _sum_axis(_fold(x, axis, SUM_BLOCK), axis, folds - 1) * _UNSCALE,
    )


def _block_size(size):
    """The run length to fold an axis of static `size` > 64 with.

    A divisor reshapes without a copy; with none in [16, 64] the axis is
    padded to a multiple of 64 instead of taking more, shorter levels.
    """
    for block in range(SUM_BLOCK, SUM_BLOCK // 4 - 1, -1):
        if size % block == 0:
            return block
    return SUM_BLOCK


def _fold(x, axis, block):
    """Sums each run of `block` consecutive positions along `axis`.

    The axis keeps its place with `ceil(size / block)` positions.
    """
    return ops.sum(_runs(x, axis, block), axis=axis + 1) * _SCALE


def _runs(x, axis, block):
    """`x` with `axis` split into `ceil(size / block)` runs of `block`.

    Zeros pad the last run. Every other axis keeps its size, known or not.
    """
    size = ops.shape(x)[axis]
    if not isinstance(size, int) or size % block:
        padding = [(0, 0)] * len(x.shape)
        # Not `(-size) % block`: Keras's ONNX export (tf2onnx) takes the
        # modulo of a negative size towards zero, -9 rather than 55.
        padding[axis] = (0, (block - size % block) % block)
        x = ops.pad(x, padding)
    shape = ops.shape(x)
    runs = (*shape[:axis], shape[axis] // block, block, *shape[axis + 1 :])
    return ops.reshape(x, runs)


def _static_sizes(x, axes):
    """Whether every spatial size is known before run time."""
    return all(x.shape[axis] is not None for axis in axes)


def _empty_pool(x, axes, keepdims):
    """The pooling of a map with no position: zeros, the sum of nothing."""
    return ops.sum(x, axis=axes, keepdims=keepdims)


def _nonzero(count):
    """`count` with 1 in place of 0, to divide by; NaN stays NaN.

    `where`, not `maximum`: Keras's torch `maximum` computes float64 in float32.
    """
    return ops.where(count == 0, 1.0, count)


def _valid_peak(logits, axes, mask):
    """The largest valid logit of each sample, to shift a softmax by.

    It is 0 where it is infinite (no valid position, or a logit of `+inf`),
    so subtracting it never gives `inf - inf`; NaN logits still give NaN. It
    takes no gradient: a softmax does not depend on its shift.
    """
    if _no_elements(logits):
        return ops.sum(logits, axis=axes, keepdims=True)  # 0: nothing to shift
    if mask is not None:
        logits = ops.where(mask, logits, float("-inf"))
    peak = ops.max(logits, axis=axes, keepdims=True)
    # `isinf`, not `isfinite`: Keras's ONNX export (tf2onnx) writes any
    # other `where` as `c * a + (1 - c) * b`, where `0 * -inf` is NaN. A NaN
    # peak stays NaN: its channel or sample is NaN either way.
    return ops.stop_gradient(ops.where(ops.isinf(peak), 0.0, peak))


def _exp_shifted(logits, axes, mask):
    """`exp(logits - peak)` at the valid positions, 0 at the masked ones.

    Masked logits never take part, whatever they are: neither in the peak
    nor, through a double `where`, in the value or the gradient.
    """
    peak = _valid_peak(logits, axes, mask)
    if mask is None:
        return ops.exp(logits - peak), peak
    shifted = ops.where(mask, logits - peak, 0.0)
    return ops.where(mask, ops.exp(shifted), 0.0), peak


def count_valid(x, axes, mask=None, keepdims=False):
    """Number of valid positions per sample, in `x`'s dtype.

    Args:
        x: tensor to be pooled.
        axes: tuple of int. The spatial axes.
        mask: optional boolean tensor broadcastable to `x`.
        keepdims: bool. Keep the reduced axes with size 1.

    Returns:
        The count, shaped like a pooled `x` with a channel axis of size 1
        when `mask` is given, else a scalar.
    """
    if mask is None:
        shape = ops.shape(x)
        count = 1
        for axis in axes:
            count = count * shape[axis]
        return ops.cast(count, x.dtype)
    return ops.sum(ops.cast(mask, x.dtype), axis=axes, keepdims=keepdims)


def _zeros_where_empty(pooled, count):
    """Zeros for the samples whose `count` of valid positions is 0."""
    return ops.where(count > 0, pooled, ops.zeros_like(pooled))


def _where_valid(pooled, x, axes, mask, keepdims):
    """Zeros for samples with nothing to pool: fully masked, or of a size
    that turns out to be 0 at run time."""
    if mask is None and _static_sizes(x, axes):
        return pooled
    return _zeros_where_empty(pooled, count_valid(x, axes, mask, keepdims))
