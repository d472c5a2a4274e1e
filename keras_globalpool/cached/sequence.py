"""`CachedSequence`: the epochs of a cache as a `keras.utils.PyDataset`.

Each batch is a pure function of its index: the index gives the epoch
(`first_epoch + index // steps`) and the batch within it, and the epoch
gives the order. No state changes between calls, so the batches are the
same whatever reads them ahead (TensorFlow's prefetch reads the next
epoch's first batches before `on_epoch_begin`). The dataset spans all the
epochs; `fit` reads it with `steps_per_epoch=steps`.
"""

import math
import threading

import keras
import numpy as np

# Rows are shuffled in contiguous blocks of about this many bytes, so a
# disk cache is read in runs rather than row by row.
BLOCK_BYTES = 2 * 2**20


def _take(array, rows):
    if isinstance(array, np.ndarray):
        return array[rows]
    return array.take(rows)


def epoch_order(samples, epoch, seed, block_rows, window_blocks):
    """`(rows, ends)`: the rows of epoch `epoch` in order, and where windows end.

    `seed=None`: not shuffled. Else blocks of `block_rows` consecutive rows
    are permuted, then taken `window_blocks` at a time, and the rows within
    each window permuted: every row once, a window's rows read together.
    `ends[k]` is the position in `rows` after window `k`.
    """
    if seed is None:
        window_rows = block_rows * window_blocks
        ends = np.append(np.arange(window_rows, samples, window_rows), samples)
        return np.arange(samples), ends
    rng = np.random.default_rng([seed, epoch])
    starts = rng.permutation(np.arange(0, samples, block_rows))
    order = []
    for first in range(0, len(starts), window_blocks):
        window = np.concatenate(
            [
                np.arange(start, min(start + block_rows, samples))
                for start in np.sort(starts[first : first + window_blocks])
            ]
        )
        order.append(rng.permutation(window))
    if not order:
        return np.arange(0), np.zeros(1, np.int64)
    return np.concatenate(order), np.cumsum([len(window) for window in order])


class CachedSequence(keras.utils.PyDataset):
    """The batches of cached maps with their labels and sample weights.

    Args:
        maps: array or `ShardedArray` of feature maps.
        y: optional array of labels. Defaults to `None`: batches are the
            maps alone (for `predict`).
        sample_weight: optional array of sample weights. Defaults to `None`.
        batch_size: int. Defaults to `32`.
        shuffle: bool. A new order each epoch. Defaults to `False`.
        seed: optional int, with `shuffle`. Defaults to `None`: drawn from
            NumPy's global generator (which `keras.utils.set_random_seed`
            seeds).
        epochs: int. Epochs the dataset spans. Defaults to `1`.
        window_bytes: optional int. Rows are shuffled within windows of
            about this many bytes, and a window of rows on disk is read at
            once, in runs of consecutive rows. Defaults to `None`: one
            window, a full permutation, when shuffled (for rows in memory);
            one block when not.
        views: int. The rows are this many views of the samples, one after
            the other; epoch `e` reads view `e % views`. Defaults to `1`.
    """

    def __init__(
        self,
        maps,
        y=None,
        sample_weight=None,
        batch_size=32,
        shuffle=False,
        seed=None,
        epochs=1,
        window_bytes=None,
        views=1,
    ):
        super().__init__()
        self.maps, self.y, self.sample_weight = maps, y, sample_weight
        self.batch_size, self.views = batch_size, views
        self.samples = len(maps) // views
        self.steps = math.ceil(self.samples / batch_size)
        self.epochs = epochs
        self.first_epoch = 0
        if shuffle and seed is None:
            seed = int(np.random.randint(2**31 - 1))
        self.seed = seed if shuffle else None
        row_bytes = max(1, int(np.prod(maps.shape[1:])) * maps.dtype.itemsize)
        self.block_rows = max(batch_size, BLOCK_BYTES // row_bytes)
        blocks = math.ceil(self.samples / self.block_rows)
        if window_bytes is not None:
            self.window_blocks = max(1, window_bytes // (self.block_rows * row_bytes))
        else:
            self.window_blocks = max(1, blocks) if self.seed is not None else 1
        self._lock = threading.Lock()
        self._orders = {}
        self._windows = {}

    def __len__(self):
        return self.steps * self.epochs

    def order(self, epoch):
        """`(rows, ends)` of `epoch`, as `epoch_order` gives them."""
        with self._lock:
            if epoch not in self._orders:
                if len(self._orders) >= 2:
                    self._orders.pop(min(self._orders))
                self._orders[epoch] = epoch_order(
                    self.samples, epoch, self.seed, self.block_rows, self.window_blocks
                )
            return self._orders[epoch]

    def _window(self, epoch, window, rows):
        # The arrays' rows of one window, read at once (its blocks are runs
        # of consecutive rows: a few long reads, not one per row) and kept
        # while its batches are read: at most two windows, as a batch may
        # span two.
        key = (epoch, window)
        with self._lock:
            if key not in self._windows:
                if len(self._windows) >= 2:
                    self._windows.pop(min(self._windows))
                rows = np.sort(rows)
                self._windows[key] = (
                    rows,
                    [
                        None if array is None else _take(array, rows)
                        for array in (self.maps, self.y, self.sample_weight)
                    ],
                )
            return self._windows[key]

    def _gather(self, epoch, begin, end, offset):
        rows, ends = self.order(epoch)
        arrays = (self.maps, self.y, self.sample_weight)
        if all(isinstance(array, np.ndarray | None) for array in arrays):
            found = rows[begin:end] + offset
            return [None if array is None else array[found] for array in arrays]
        parts = []
        first = int(np.searchsorted(ends, begin, side="right"))
        last = int(np.searchsorted(ends, end - 1, side="right"))
        for window in range(first, last + 1):
            start = 0 if window == 0 else int(ends[window - 1])
            wanted = rows[max(begin, start) : min(end, int(ends[window]))] + offset
            stored, arrays = self._window(
                epoch, window, rows[start : int(ends[window])] + offset
            )
            where = np.searchsorted(stored, wanted)
            parts.append([None if a is None else a[where] for a in arrays])
        return [
            None if part[0] is None else np.concatenate(part)
            for part in zip(*parts, strict=True)
        ]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        epoch, step = divmod(index, self.steps)
        epoch += self.first_epoch
        begin = step * self.batch_size
        end = min(begin + self.batch_size, self.samples)
        offset = (epoch % self.views) * self.samples
        maps, y, sample_weight = self._gather(epoch, begin, end, offset)
        if self.y is None:
            return maps
        batch = (maps, y)
        if self.sample_weight is not None:
            batch += (sample_weight,)
        return batch
