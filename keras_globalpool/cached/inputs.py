"""Reading any `model.fit` input as NumPy batches, one batch at a time.

`BatchSource` takes what `model.fit` takes as `x` (with `y` and
`sample_weight` for arrays) and yields `(images, y, sample_weight)`
NumPy batches, `y` and `sample_weight` `None` when the input has none. It
holds one batch at a time, so a dataset larger than memory streams through
the backbone. The rules are Keras's (`keras.src.trainers.data_adapters`,
which is not public): a dataset, `PyDataset` or generator yields
`(x,)`, `(x, y)` or `(x, y, sample_weight)` and refuses a separate `y` or
`sample_weight`.
"""

import collections.abc
import sys

import keras
import numpy as np

from keras_globalpool.cached import distributed


def _is_tf_dataset(x):
    # Without importing TensorFlow: a dataset exists only once it is loaded.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def _kind(x):
    if _is_tf_dataset(x):
        return "tf.data.Dataset"
    if isinstance(x, keras.utils.PyDataset):
        return "PyDataset"
    if isinstance(x, collections.abc.Iterator):
        return "generator"
    if hasattr(x, "shape") and hasattr(x, "__len__"):
        return "array"
    raise ValueError(f"Unrecognized data type: x={x!r} (of type {type(x)})")


def _to_numpy(value):
    if value is None or isinstance(value, np.ndarray):
        return value
    return keras.ops.convert_to_numpy(value)


def _unpack(element):
    if isinstance(element, tuple | list) and 1 <= len(element) <= 3:
        return (*element, None, None)[:3], len(element)
    return (element, None, None), 1


class BatchSource:
    """The batches of a `model.fit` input, as NumPy `(images, y, sample_weight)`.

    Iterating reads the input once, pulling one batch at a time from a
    dataset, `PyDataset` or generator (whose own batches are kept), or
    slicing arrays into batches of `batch_size`.

    Args:
        x: array of images (with `y` and `sample_weight`), a batched
            `tf.data.Dataset`, a `keras.utils.PyDataset`, or a generator
            or iterator, each yielding `(x,)`, `(x, y)` or
            `(x, y, sample_weight)` batches (or bare `x` batches).
        y: optional array of targets, only with array `x`.
        sample_weight: optional array of sample weights, only with array
            `x`.
        batch_size: int. Rows per batch for array `x`. Defaults to `32`.
        steps: optional int. Read at most this many batches; needed for an
            infinite input. Defaults to `None`: until the input ends.
        needs_labels: optional str, the function that needs labels: then
            an input without them is refused at its first batch, before
            the backbone runs over it all. Defaults to `None`.
        shard: optional `(index, count)`: yield only the samples of shard
            `index` of `count`, block-interleaved: with global batches of
            `shard_batch` samples, sample `i` is in shard
            `(i // (shard_batch / count)) % count`, so every batch's
            samples split evenly over the shards. Defaults to `None`: all
            the samples.
        shard_batch: optional int, with `shard`. Defaults to `None`:
            `batch_size` for array `x`, else the rows of `x`'s first batch.

    Example:

    >>> source = BatchSource(np.zeros((5, 2)), np.arange(5), batch_size=2)
    >>> [(x.shape, y.tolist(), sw) for x, y, sw in source]
    [((2, 2), [0, 1], None), ((2, 2), [2, 3], None), ((1, 2), [4], None)]
    >>> source = BatchSource(np.zeros((8, 2)), np.arange(8), batch_size=4,
    ...                      shard=(1, 2))
    >>> [y.tolist() for _, y, _ in source]
    [[2, 3], [6, 7]]
    """

    def __init__(
        self, x, y=None, sample_weight=None, batch_size=32, steps=None,
        needs_labels=None, shard=None, shard_batch=None,
    ):  # fmt: skip
        self.kind = _kind(x)
        self.shard = distributed.check_shard(shard)
        self._block = None
        if self.kind == "array":
            distributed.check_batch_size(batch_size)
            self._block = distributed.check_shard_batch(
                shard_batch or batch_size, self.shard
            )
        if self.kind != "array":
            for name, value, what in (
                ("y", y, "the targets"),
                ("sample_weights", sample_weight, "the sample weights"),
            ):
                if value is not None:
                    # Keras's own wording (data_adapters.raise_unsupported_arg).
                    raise ValueError(
                        f"When providing `x` as a {self.kind}, `{name}` "
                        f"should not be passed. Instead, {what} should "
                        f"be included as part of the {self.kind}."
                    )
        elif needs_labels and y is None:
            raise ValueError(
                f"`{needs_labels}` needs labels: pass `y` with array `x`, or "
                "a dataset, `PyDataset` or generator of `(images, labels)` or "
                "`(images, labels, sample_weights)` batches, as for "
                "`model.fit`. Received: x as an array and y=None"
            )
        if steps is None and self.kind in ("tf.data.Dataset", "PyDataset"):
            infinite = (
                x.cardinality() == -1  # tf.data.INFINITE_CARDINALITY
                if self.kind == "tf.data.Dataset"
                else x.num_batches is None
            )
            if infinite:
                raise ValueError(
                    f"`x` is an infinite {self.kind}: pass `steps`, the "
                    f"number of batches to read. Received: steps={steps}"
                )
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.batch_size, self.steps, self.needs_labels = batch_size, steps, needs_labels
        self.shard_batch = shard_batch
        # The rows of the first batch read, once read: the input's batch size.
        self.first_batch_rows = None

    @property
    def samples(self):
        """The number of samples, when known before reading; else `None`."""
        if self.kind != "array":
            return None
        if self.shard is None:
            return len(self.x)
        return len(distributed.shard_rows(0, len(self.x), self._block, self.shard))

    def __iter__(self):
        offset = 0
        for step, element in enumerate(self._elements()):
            (x, y, sample_weight), size = _unpack(element)
            if step == 0:
                self.first_batch_rows = len(x)
                if self.shard is not None and self._block is None:
                    self._block = distributed.check_shard_batch(
                        self.shard_batch or len(x), self.shard
                    )
            if step == 0 and self.needs_labels and y is None:
                raise ValueError(
                    f"`{self.needs_labels}` needs labels: `x` must yield "
                    "`(images, labels)` or `(images, labels, sample_weights)` "
                    "batches, as for `model.fit`. Received: a "
                    f"{self.kind} whose batches hold {size} tensor"
                    f"{'s' if size > 1 else ''}"
                )
            x, y, sample_weight = (_to_numpy(v) for v in (x, y, sample_weight))
            if self.shard is not None:
                rows = distributed.shard_rows(offset, len(x), self._block, self.shard)
                offset += len(x)
                if not len(rows):
                    continue
                x, y, sample_weight = (
                    None if v is None else v[rows] for v in (x, y, sample_weight)
                )
            yield x, y, sample_weight

    def _elements(self):
        x, steps = self.x, self.steps
        if self.kind == "array":
            for start in range(0, len(x), self.batch_size):
                end = start + self.batch_size
                yield tuple(
                    None if a is None else a[start:end]
                    for a in (x, self.y, self.sample_weight)
                )
        elif self.kind == "tf.data.Dataset":
            yield from (x if steps is None else x.take(steps)).as_numpy_iterator()
        elif self.kind == "PyDataset":
            # As Keras's PyDatasetAdapter calls them around an epoch.
            x.on_epoch_begin()
            count = x.num_batches if steps is None else steps
            for index in range(count):
                yield x[index]
            x.on_epoch_end()
        else:
            for step, element in enumerate(x):
                yield element
                if steps is not None and step + 1 == steps:
                    return
