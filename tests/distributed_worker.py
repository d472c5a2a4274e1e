"""One distributed run for tests/test_cached_distributed.py, in its own process.

    python tests/distributed_worker.py SCENARIO OUT_JSON

Each scenario trains the same small classifier distributed and writes what
the test compares with a single-device run as JSON to OUT_JSON:

- `mirrored`: TensorFlow `MirroredStrategy` over 2 logical CPUs, and the
  single-device reference in the same process.
- `multi_worker`: one worker of a `MultiWorkerMirroredStrategy` (from
  `TF_CONFIG`); without `TF_CONFIG`, the single-process reference.
- `jax`: `keras.distribution.DataParallel` over 2 CPU devices (from
  `XLA_FLAGS`), and the single-device reference in the same process.

The distribution must be set up before the backend initialises, hence a
process per run.
"""

import contextlib
import json
import os
import sys

SAMPLES, BATCH, EPOCHS = 16, 8, 2


def _data(np, samples=SAMPLES, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((samples, 8, 8, 3)) * 255).astype("float32")
    y = np.arange(samples) % 3
    # Distinct weights: they name each row in a cache.
    sample_weight = (1 + np.arange(samples) / 100).astype("float32")
    return x, y, sample_weight


def _classifier(keras, kgp, pooling="gem", backbone_layers=()):
    backbone = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            *backbone_layers,
        ]
    )
    return kgp.build_classifier(
        backbone, 3, input_shape=(8, 8, 3), pooling=pooling, weights=None, dropout=0.0
    )


def _head_weights(model):
    return [
        w.tolist()
        for name in ("pooler", "predictions")
        for w in model.get_layer(name).get_weights()
    ]


def mirrored():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    import numpy as np

    import keras_globalpool as kgp

    strategy = tf.distribute.MirroredStrategy(
        [device.name for device in tf.config.list_logical_devices("CPU")]
    )
    seen = {"backbone": set(), "head": set()}

    def replicas(where):
        # At trace time, in the replica context the step runs in (None in
        # the cross-replica context where Keras builds the metrics).
        context = tf.distribute.get_replica_context()
        if context is not None:
            seen[where].add(context.num_replicas_in_sync)

    class BackboneProbe(keras.layers.Layer):
        def call(self, inputs):
            replicas("backbone")
            return inputs

    def loss(y_true, y_pred):
        replicas("head")
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    x, y, sample_weight = _data(np)
    runs = {}
    initial = None
    for name in ("single", "mirrored"):
        keras.utils.set_random_seed(0)
        scope = strategy.scope() if name == "mirrored" else contextlib.nullcontext()
        with scope:
            model = _classifier(keras, kgp, backbone_layers=[BackboneProbe()])
            if initial is None:
                initial = model.get_weights()
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        for where in seen:
            seen[where].clear()
        cached = kgp.cache_features(model, x, y, batch_size=BATCH)
        history = kgp.fit_cached(
            model, x, y, sample_weight=sample_weight, batch_size=BATCH,
            epochs=EPOCHS, shuffle=False, verbose=0,
        )  # fmt: skip
        runs[name] = {
            "maps": np.asarray(cached.maps, "float32").tolist(),
            "weights": _head_weights(model),
            "loss": history.history["loss"],
            "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
            "replicas": {where: sorted(seen[where]) for where in seen},
            "num_replicas_in_sync": model.distribute_strategy.num_replicas_in_sync,
        }
    return runs


def multi_worker():
    # First thing: collective ops must be configured at program startup.
    import tensorflow as tf

    strategy = None
    if "TF_CONFIG" in os.environ:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras
    import numpy as np

    import keras_globalpool as kgp

    x, y, sample_weight = _data(np)
    x_val, y_val, _ = _data(np, samples=BATCH * 2, seed=1)
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = _classifier(keras, kgp)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="sparse_categorical_crossentropy",
            metrics=["sparse_categorical_accuracy"],
        )
    cached = kgp.cache_features(
        model, x, y, sample_weight=sample_weight, batch_size=BATCH
    )
    history = kgp.fit_cached(
        model, x, y, sample_weight=sample_weight, batch_size=BATCH, epochs=EPOCHS,
        shuffle=False, validation_data=(x_val, y_val), verbose=0,
    )  # fmt: skip
    return {
        "cached_rows": np.round((cached.sample_weight - 1) * 100).astype(int).tolist(),
        "weights": _head_weights(model),
        "history": history.history,
        "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "num_replicas_in_sync": model.distribute_strategy.num_replicas_in_sync,
    }


def jax():
    import keras
    import numpy as np

    import keras_globalpool as kgp

    devices = keras.distribution.list_devices("cpu")
    parallel = keras.distribution.DataParallel(devices=devices)
    x, y, sample_weight = _data(np)
    maps = np.random.default_rng(2).random((SAMPLES, 4, 4, 6)).astype("float32")
    runs = {"devices": len(devices)}
    weights = {}
    for name, distribution in (("single", None), ("parallel", parallel)):
        keras.distribution.set_distribution(distribution)
        run = runs[name] = {"poolings": {}}
        for pooling in ("avg", "max", "gem", "attention"):
            model = keras.Sequential([keras.Input((4, 4, 6)), kgp.get(pooling)])
            model.set_weights(weights.setdefault(pooling, model.get_weights()))
            run["poolings"][pooling] = model.predict(
                maps, batch_size=BATCH, verbose=0
            ).tolist()
        for how in ("fit", "fit_cached"):
            keras.utils.set_random_seed(0)
            model = _classifier(keras, kgp)
            model.set_weights(weights.setdefault("classifier", model.get_weights()))
            model.compile(
                optimizer=keras.optimizers.SGD(0.1),
                loss="sparse_categorical_crossentropy",
            )
            arguments = dict(
                sample_weight=sample_weight, batch_size=BATCH, epochs=EPOCHS,
                shuffle=False, verbose=0,
            )  # fmt: skip
            if how == "fit":
                history = model.fit(x, y, **arguments)
            else:
                history = kgp.fit_cached(model, x, y, **arguments)
            run[how] = {
                "weights": _head_weights(model),
                "loss": history.history["loss"],
                "predictions": model.predict(x, batch_size=BATCH, verbose=0).tolist(),
            }
        errors = run["errors"] = {}
        for call in ("fit_cached", "cache_features"):
            try:
                if call == "fit_cached":
                    kgp.fit_cached(model, x, y, batch_size=3, verbose=0)
                else:
                    kgp.cache_features(model, x, y, batch_size=3)
                errors[call] = None
            except ValueError as error:
                errors[call] = str(error)
    return runs


if __name__ == "__main__":
    scenario, out = sys.argv[1:]
    result = {"mirrored": mirrored, "multi_worker": multi_worker, "jax": jax}[
        scenario
    ]()
    with open(out, "w") as file:
        json.dump(result, file)
