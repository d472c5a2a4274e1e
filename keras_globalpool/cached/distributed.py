"""Cached training under a distribution: TensorFlow strategies and jax meshes.

- `tf.distribute.MirroredStrategy` (one machine): the backbone pass and the
  head's training run on every replica. The head is a new `keras.Model`,
  which takes the strategy it is built in, so it is built and compiled in
  `model.distribute_strategy.scope()`; built outside, it would train under
  the default strategy, on one replica.
- `tf.distribute.MultiWorkerMirroredStrategy` (several machines): each
  worker caches its own shard of the data and trains on it, through a
  `DistributedDataset`. Shards are block-interleaved: with a global batch
  of `B` over `W` workers, sample `i` belongs to worker `(i // (B / W)) % W`,
  so global step `k` holds exactly the samples of single-process batch `k`.
  Keras 3.15 cannot train under this strategy as it stands
  (keras-team/keras#20585): `fit` reduces the first batch with
  `strategy.reduce(..., axis=None)` on a tuple, which this strategy refuses
  ("Attempt to convert a value (PerReplica:...) with an unsupported type"),
  then reduces each scalar log with `axis=0` ("Invalid reduction dimension
  0 for input with 0 dimensions"). `multi_worker_head` works around both.
- `keras.distribution.DataParallel` (jax): each batch is split over the
  devices, so its size must divide by their number.
"""

import contextlib

import keras
import numpy as np

UPSTREAM_ISSUE = "keras-team/keras#20585"


def strategy_of(model):
    """`model`'s `tf.distribute.Strategy`, or `None` off TensorFlow or without one."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    return strategy


def is_multi_worker(strategy):
    """Whether `strategy` spans several processes (`MultiWorkerMirroredStrategy`)."""
    if strategy is None:
        return False
    import tensorflow as tf

    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def scope(model, multi_worker=True):
    """The scope of `model`'s strategy, to build and compile models in.

    With `multi_worker=False`, a multi-worker strategy gives no scope: a
    model built outside runs locally, without collective ops (each worker's
    backbone pass over its own shard).
    """
    strategy = strategy_of(model)
    if strategy is None or (not multi_worker and is_multi_worker(strategy)):
        return contextlib.nullcontext()
    return strategy.scope()


def predict_batch(features, x):
    """`features` on one batch `x`, as NumPy, split over its strategy's replicas.

    `predict_on_batch` of a model built in a `MirroredStrategy` scope gives
    each replica the whole batch and concatenates their outputs (twice the
    rows on 2 replicas), so such a model goes through `predict`, which
    splits the batch.
    """
    strategy = strategy_of(features)
    if (
        strategy is not None
        and strategy.num_replicas_in_sync > 1
        and not is_multi_worker(strategy)
    ):
        return features.predict(x, batch_size=len(x), verbose=0)
    return keras.ops.convert_to_numpy(features.predict_on_batch(x))


def _worker_index(strategy):
    # As tf.distribute's multi_worker_util.id_in_cluster: chief first.
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    chiefs = len(cluster.get("chief", []))
    if resolver.task_type == "chief":
        return 0, chiefs + len(cluster.get("worker", []))
    return chiefs + resolver.task_id, chiefs + len(cluster.get("worker", []))


def check_shard(shard, model=None):
    """`shard` as `(index, count)`, or `None`: one shard holds all the data.

    `None` under a `MultiWorkerMirroredStrategy` of `model` is this
    worker's shard, `(worker index, number of workers)`.
    """
    if shard is None:
        strategy = strategy_of(model) if model is not None else None
        return _worker_index(strategy) if is_multi_worker(strategy) else None
    valid = (
        isinstance(shard, tuple | list)
        and len(shard) == 2
        and all(isinstance(v, int | np.integer) for v in shard)
        and 0 <= shard[0] < shard[1]
    )
    if not valid:
        raise ValueError(
            "`shard` must be `(index, count)`, two ints with "
            f"0 <= index < count. Received: shard={shard!r}"
        )
    return int(shard[0]), int(shard[1])


def check_shard_batch(batch_size, shard, argument="batch_size"):
    """The rows of a shard's blocks: `batch_size` over the number of shards."""
    if shard is None:
        return None
    count = shard[1]
    if batch_size % count:
        raise ValueError(
            f"`{argument}` must divide by the number of shards, which each "
            f"take `{argument} / {count}` samples of every batch. "
            f"Received: {argument}={batch_size} for {count} shards"
        )
    return batch_size // count


def shard_rows(offset, rows, block, shard):
    """The positions, in a batch of `rows` samples from sample `offset` on,
    of the samples of `shard`: sample `i` is in shard `(i // block) % count`.
    """
    index, count = shard
    samples = np.arange(offset, offset + rows)
    return np.flatnonzero((samples // block) % count == index)


def batch_devices():
    """The devices each batch is split over by the jax distribution, or 1."""
    distribution = keras.distribution.distribution()
    if distribution is None or not isinstance(
        distribution, keras.distribution.DataParallel | keras.distribution.ModelParallel
    ):
        return 1
    mesh = distribution.device_mesh
    axes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    return int(axes.get(distribution.batch_dim_name, 1))


def check_batch_size(batch_size, argument="batch_size", samples=None):
    """Refuses a batch the jax distribution cannot split over its devices.

    With `samples`, the last batch of `samples` in batches of `batch_size`
    must divide too.
    """
    devices = batch_devices()
    if batch_size is None or devices == 1:
        return
    split = (
        f"the distribution ({type(keras.distribution.distribution()).__name__}) "
        f"splits each batch over {devices} devices"
    )
    if batch_size % devices:
        raise ValueError(
            f"`{argument}` must divide by the number of devices, {devices}: "
            f"{split}. Received: {argument}={batch_size} for {devices} devices"
        )
    if samples is not None and samples % batch_size % devices:
        raise ValueError(
            f"The last batch holds {samples % batch_size} samples, which do "
            f"not divide by the number of devices: {split}. Pass a number of "
            f"samples or a `{argument}` that leaves a last batch dividing by "
            f"{devices}. Received: {samples} samples and {argument}="
            f"{batch_size} for {devices} devices"
        )


def distribute_sequence(strategy, sequence):
    """A `DistributedDataset` of `sequence`'s batches, each a worker's part.

    Each worker feeds its own shard: auto-sharding is off, so the dataset
    is not split again.
    """
    import tensorflow as tf

    first = sequence[0]
    signature = tuple(
        tf.TensorSpec((None, *np.shape(part)[1:]), tf.as_dtype(np.asarray(part).dtype))
        for part in first
    )

    def batches():
        for index in range(len(sequence)):
            yield tuple(sequence[index])

    def dataset(_):
        data = tf.data.Dataset.from_generator(batches, output_signature=signature)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        return data.with_options(options).prefetch(1)

    return strategy.distribute_datasets_from_function(dataset)


def check_equal_steps(strategy, steps, argument="x"):
    """Refuses shards whose numbers of steps differ between workers."""
    import tensorflow as tf

    local = tf.constant([steps], tf.int64)
    values = strategy.experimental_distribute_values_from_function(lambda _: local)
    every = strategy.gather(values, axis=0).numpy().tolist()
    if len(set(every)) > 1:
        raise ValueError(
            f"Every worker must train the same number of steps, but the "
            f"shards of `{argument}` give {every}: pass a number of samples "
            "that divides by the batch size. "
            f"Received: {steps} steps on this worker"
        )


def multi_worker_head(head):
    """`head` (the same layers) as a model `fit` can train under MWMS."""
    import tensorflow as tf

    class MultiWorkerHead(keras.Model):
        # Works around keras-team/keras#20585 (see the module docstring).

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            # Keras reduces the first batch's structure of PerReplica values,
            # which MWMS refuses; building needs only shapes: take this
            # worker's own batch.
            if iterator is not None:
                for _, _, batches in iterator:
                    data_batch = keras.tree.map_structure(
                        lambda v: (
                            self.distribute_strategy.experimental_local_results(v)[0]
                            if isinstance(v, tf.distribute.DistributedValues)
                            else v
                        ),
                        next(batches),
                    )
                    break
            with self.distribute_strategy.scope():
                self._symbolic_build(data_batch=data_batch)

        # Keras reduces each log across workers with axis=0, which a scalar
        # lacks: logs of shape (1,) average instead.
        def train_step(self, data):
            return _as_vectors(super().train_step(data))

        def test_step(self, data):
            return _as_vectors(super().test_step(data))

    return MultiWorkerHead(head.inputs, head.outputs, name=head.name)


def _as_vectors(logs):
    return {key: keras.ops.reshape(value, (1,)) for key, value in logs.items()}


def squeeze_logs(logs):
    """Logs of shape (1,), from `multi_worker_head`, as scalars."""
    if not logs:
        return logs
    return {
        key: keras.ops.reshape(value, ()) if np.shape(value) == (1,) else value
        for key, value in logs.items()
    }
