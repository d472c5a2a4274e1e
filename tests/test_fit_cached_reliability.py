"""`kgp.fit_cached` against `model.fit`: callbacks, compile objects, refusals, dtypes.

Each test trains one model with `model.fit` on the images (the reference)
and a twin with the same initial weights with `fit_cached`, without
shuffling and without dropout. The cache is given as float32 maps computed
by the backbone itself, so both runs see the same numbers and their
histories agree to float32 rounding.
"""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_globalpool as kgp
from keras_globalpool.cli import data

EPOCHS = 3
BATCH = 64
# Float32 rounding between the full model's graph and the head's.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
FLOAT16_TINY = float(np.finfo("float16").tiny)  # 2**-14
FLOAT16_ROUNDOFF = 2.0**-11


@pytest.fixture(scope="module")
def digits():
    train, test = data.stratified_split(data.load_digits(), test_fraction=0.25)
    return (train.x[:256], train.y[:256]), (test.x[:64], test.y[:64])


def backbone(*layers, scale=1.0 / 255.0, filters=16):
    """A fixed random conv net, with `layers` before its convolution."""
    keras.utils.set_random_seed(123)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(scale),
            *layers,
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
        ],
        name="random_features",
    )


def default_compile():
    return {
        "optimizer": keras.optimizers.Adam(3e-3),
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
    }


def classifier(
    make_backbone=backbone, pooling="attention", compile_kwargs=None, **build_kwargs
):
    model = kgp.build_classifier(
        make_backbone(),
        10,
        input_shape=(8, 8, 1),
        pooling=pooling,
        dropout=0.0,
        **build_kwargs,
    )
    model.compile(**(compile_kwargs or default_compile)())
    return model


def twins(make_backbone=backbone, compile_kwargs=None, **build_kwargs):
    """Two compiled models with the same weights and their own compile objects."""
    plain = classifier(make_backbone, compile_kwargs=compile_kwargs, **build_kwargs)
    cached = classifier(make_backbone, compile_kwargs=compile_kwargs, **build_kwargs)
    cached.set_weights(plain.get_weights())
    return plain, cached


def float32_maps(model, x):
    """The backbone's maps, computed by the backbone, as float32."""
    maps = model.get_layer("backbone").predict(x, verbose=0)
    return kgp.CachedFeatures(np.asarray(maps, "float32"))


def fit_both(plain, cached, train, val=None, callbacks=(), **kwargs):
    """`model.fit` on images and `fit_cached` on float32 maps, alike.

    `callbacks` are functions each returning a fresh callback, so each run
    gets its own. Returns both histories and both callback lists.
    """
    (x, y), settings = train, {"epochs": EPOCHS, "batch_size": BATCH, **kwargs}
    plain_callbacks = [make() for make in callbacks]
    cached_callbacks = [make() for make in callbacks]
    plain_history = plain.fit(
        x,
        y,
        shuffle=False,
        verbose=0,
        validation_data=val,
        callbacks=plain_callbacks,
        **settings,
    )
    cached_val = None if val is None else (float32_maps(cached, val[0]), val[1])
    cached_history = kgp.fit_cached(
        cached,
        float32_maps(cached, x),
        y,
        shuffle=False,
        verbose=0,
        validation_data=cached_val,
        callbacks=cached_callbacks,
        **settings,
    )
    return (plain_history.history, plain_callbacks), (
        cached_history.history,
        cached_callbacks,
    )


def assert_same_history(expected, actual):
    assert sorted(actual) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(actual[key], values, **TOLERANCE, err_msg=key)


def assert_same_weights(expected, actual):
    for e, a in zip(expected.get_weights(), actual.get_weights(), strict=True):
        np.testing.assert_allclose(a, e, **TOLERANCE)


# === Callbacks see the full model ===


class RecordModel(keras.callbacks.Callback):
    """Records what a callback sees as `self.model` at each hook."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_begin(self, logs=None):
        self.seen.append((self.model, self.model.optimizer))

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((self.model, self.model.optimizer))


def test_callbacks_see_the_users_model_and_its_optimizer(digits):
    model = classifier()
    record = RecordModel()
    history = kgp.fit_cached(model, *digits[0], epochs=2, verbose=0, callbacks=[record])
    assert len(record.seen) == 3
    for seen_model, seen_optimizer in record.seen:
        assert seen_model is model
        assert seen_optimizer is model.optimizer
    # As after `model.fit`, the model holds the History that was returned.
    assert model.history is history and len(history.history["loss"]) == 2


class RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


FRESH_PROCESS_PREDICT = """
import sys
import numpy as np
import keras
import keras_globalpool  # noqa: F401 (registers the layers)
model = keras.models.load_model(sys.argv[1])  # safe_mode=True
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


def predict_in_fresh_process(path, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    out = tmp_path / "predictions.npy"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRESH_PROCESS_PREDICT)]
        + [str(path), str(tmp_path / "images.npy"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def test_best_checkpoint_loads_in_a_fresh_process_and_predicts_from_images(
    digits, tmp_path
):
    train, (x_val, y_val) = digits
    model, twin = twins()
    path = tmp_path / "best.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(path), monitor="val_loss", save_best_only=True
    )
    record = RecordWeights()
    history = kgp.fit_cached(
        model,
        *train,
        epochs=EPOCHS,
        verbose=0,
        validation_data=(x_val, y_val),
        callbacks=[checkpoint, record],
    )
    loaded = predict_in_fresh_process(path, x_val, tmp_path)
    # The file holds the model of the best epoch: a twin given that epoch's
    # weights predicts the same from the raw images.
    best = int(np.argmin(history.history["val_loss"]))
    twin.set_weights(record.weights[best])
    np.testing.assert_allclose(loaded, twin.predict(x_val, verbose=0), atol=1e-6)
    if best == EPOCHS - 1:
        np.testing.assert_allclose(loaded, model.predict(x_val, verbose=0), atol=1e-6)


def test_weights_checkpoint_loads_into_the_full_model(digits, tmp_path):
    train, (x_val, _) = digits
    model, twin = twins()
    path = tmp_path / "last.weights.h5"
    checkpoint = keras.callbacks.ModelCheckpoint(str(path), save_weights_only=True)
    kgp.fit_cached(model, *train, epochs=2, verbose=0, callbacks=[checkpoint])
    twin.load_weights(str(path))
    np.testing.assert_allclose(
        twin.predict(x_val, verbose=0), model.predict(x_val, verbose=0), atol=1e-6
    )


def early_stopping():
    # The loss falls every epoch, so in "max" mode epoch 2 is no improvement
    # on epoch 1 and, with patience 1, training stops there.
    return keras.callbacks.EarlyStopping(
        monitor="loss", mode="max", patience=1, restore_best_weights=True
    )


def test_early_stopping_stops_and_restores_as_in_model_fit(digits):
    plain, cached = twins()
    (expected, [plain_stop]), (actual, [cached_stop]) = fit_both(
        plain, cached, digits[0], epochs=10, callbacks=[early_stopping]
    )
    assert len(expected["loss"]) == 2  # model.fit stopped early.
    assert_same_history(expected, actual)
    assert cached_stop.stopped_epoch == plain_stop.stopped_epoch == 1
    assert cached.stop_training and plain.stop_training
    assert_same_weights(plain, cached)  # Both restored epoch 1's weights.


LEARNING_RATE_CALLBACKS = {
    "scheduler": lambda: keras.callbacks.LearningRateScheduler(
        lambda epoch: 1e-2 * 0.5**epoch
    ),
    # min_delta above any change: every epoch after the first halves it.
    "plateau": lambda: keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=10.0
    ),
}


@pytest.mark.parametrize("name", sorted(LEARNING_RATE_CALLBACKS))
def test_learning_rate_callbacks_drive_the_optimizer_that_trains(digits, name):
    plain, cached = twins()
    (expected, _), (actual, _) = fit_both(
        plain, cached, digits[0], callbacks=[LEARNING_RATE_CALLBACKS[name]]
    )
    assert_same_history(expected, actual)
    # The user's optimizer is the one whose rate changed, and it trained.
    assert len(set(actual["learning_rate"])) > 1
    np.testing.assert_allclose(
        cached.optimizer.learning_rate.numpy(), plain.optimizer.learning_rate.numpy()
    )
    assert int(cached.optimizer.iterations) == int(plain.optimizer.iterations) > 0
    assert_same_weights(plain, cached)


def test_csv_logger_records_the_same_as_in_model_fit(digits, tmp_path):
    paths = iter([tmp_path / "plain.csv", tmp_path / "cached.csv"])
    fit_both(
        *twins(),
        digits[0],
        val=digits[1],
        callbacks=[lambda: keras.callbacks.CSVLogger(str(next(paths)))],
    )
    expected = np.genfromtxt(tmp_path / "plain.csv", delimiter=",", names=True)
    actual = np.genfromtxt(tmp_path / "cached.csv", delimiter=",", names=True)
    assert actual.dtype.names == expected.dtype.names
    assert "val_loss" in expected.dtype.names and len(expected) == EPOCHS
    for name in expected.dtype.names:
        np.testing.assert_allclose(actual[name], expected[name], **TOLERANCE)


def test_pooled_feature_monitor_logs_what_it_logs_in_model_fit(digits):
    images = digits[1][0][:8]
    (expected, _), (actual, _) = fit_both(
        *twins(),
        digits[0],
        callbacks=[lambda: kgp.PooledFeatureMonitor(images)],
    )
    assert {"pooled_mean", "pooled_dead_fraction"} <= set(expected)
    assert_same_history(expected, actual)


class Interrupt(keras.callbacks.Callback):
    """Stops the process-like run by raising after epoch `at`."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_at_the_epoch_model_fit_resumes(digits, tmp_path):
    histories = []
    for name, train in (("plain", "fit"), ("cached", "fit_cached")):
        model = classifier()
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / name))

        def run(*callbacks, model=model, train=train):
            if train == "fit":
                return model.fit(
                    *digits[0], epochs=EPOCHS, verbose=0, callbacks=list(callbacks)
                )
            return kgp.fit_cached(
                model, *digits[0], epochs=EPOCHS, verbose=0, callbacks=list(callbacks)
            )

        with pytest.raises(RuntimeError, match="interrupted"):
            run(backup, Interrupt(at=1))
        histories.append(run(backup).epoch)
    # Both resume after the two epochs done before the interruption.
    assert histories[0] == histories[1] == [2]


# === Layers that act only in training ===

TRAINING_ONLY = {
    "random_flip": lambda: keras.layers.RandomFlip(seed=1),
    "random_rotation": lambda: keras.layers.RandomRotation(0.2),
    "random_zoom": lambda: keras.layers.RandomZoom(0.3),
    "dropout": lambda: keras.layers.Dropout(0.5),
    "spatial_dropout": lambda: keras.layers.SpatialDropout2D(0.5),
    "gaussian_noise": lambda: keras.layers.GaussianNoise(0.1),
    "gaussian_dropout": lambda: keras.layers.GaussianDropout(0.3),
    "alpha_dropout": lambda: keras.layers.AlphaDropout(0.3),
    # Without gamma and beta it has no weights, but batch statistics in training.
    "batch_norm": lambda: keras.layers.BatchNormalization(center=False, scale=False),
}


def walk(layer):
    """`layer` and every layer inside it, nested models included."""
    yield layer
    for inner in getattr(layer, "layers", ()):
        yield from walk(inner)


def with_layer(layer, nested, trainable=None):
    """A classifier whose backbone holds `layer`, in a nested model if `nested`.

    BatchNorm stays a Keras BatchNorm (no `freeze_batch_norm`); `trainable`
    sets the flag of `layer`'s copy after the builder froze the backbone.
    """
    layer_name = layer.name
    model = classifier(
        lambda: backbone(
            keras.Sequential([layer], name="augment") if nested else layer
        ),
        freeze_batch_norm=False,
    )
    if trainable is not None:
        copy = [inner for inner in walk(model) if inner.name == layer_name]
        (copy,) = copy
        copy.trainable = trainable
    return model


def differs_in_training(model, x):
    features = model.get_layer("backbone")
    x = x.astype("float32")
    trained = keras.ops.convert_to_numpy(features(x, training=True))
    inferred = keras.ops.convert_to_numpy(features(x, training=False))
    return not np.allclose(trained, inferred)


@pytest.mark.parametrize("nested", [False, True], ids=["backbone", "nested_model"])
@pytest.mark.parametrize("kind", sorted(TRAINING_ONLY))
def test_refuses_a_layer_that_acts_only_in_training(digits, kind, nested):
    layer = TRAINING_ONLY[kind]()
    trainable = True if kind == "batch_norm" else None
    model = with_layer(layer, nested, trainable)
    # The independent check: model.fit would run it differently.
    assert differs_in_training(model, digits[0][0][:16])
    with pytest.raises(ValueError, match=f"'{layer.name}'.*data pipeline.*model.fit"):
        kgp.fit_cached(model, *digits[0], verbose=0)


ALIKE_IN_TRAINING = {
    "frozen_batch_norm": (lambda: keras.layers.BatchNormalization(), False),
    "kgp_frozen_batch_norm": (
        lambda: kgp.FrozenBatchNormalization(center=False, scale=False),
        True,
    ),
    "dropout_zero": (lambda: keras.layers.Dropout(0.0), None),
    "resizing": (lambda: keras.layers.Resizing(8, 8), None),
}


@pytest.mark.parametrize("kind", sorted(ALIKE_IN_TRAINING))
def test_accepts_layers_that_act_alike_in_training(digits, kind):
    make, trainable = ALIKE_IN_TRAINING[kind]
    plain, cached = (with_layer(make(), True, trainable) for _ in range(2))
    cached.set_weights(plain.get_weights())
    assert not differs_in_training(plain, digits[0][0][:16])
    (expected, _), (actual, _) = fit_both(plain, cached, digits[0])
    assert_same_history(expected, actual)


def test_allow_inference_mode_trains_on_inference_maps(digits):
    flipping = classifier(lambda: backbone(keras.layers.RandomFlip(seed=1)))
    # A RandomFlip in inference mode passes images through: the reference is
    # model.fit on the same model without it.
    plain = classifier()
    flipping.get_layer("backbone").layers[-1].set_weights(
        plain.get_layer("backbone").layers[-1].get_weights()
    )
    for name in ("pooler", "predictions"):
        flipping.get_layer(name).set_weights(plain.get_layer(name).get_weights())
    expected = plain.fit(
        *digits[0], epochs=2, batch_size=BATCH, shuffle=False, verbose=0
    ).history
    actual = kgp.fit_cached(
        flipping,
        *digits[0],
        epochs=2,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        allow_inference_mode=True,
    ).history
    # The cache is float16, within 2**-11 of the float32 maps.
    for key, values in expected.items():
        np.testing.assert_allclose(actual[key], values, rtol=2e-3, err_msg=key)


# === Custom compile objects ===


def squared_hinge_loss(y_true, y_pred):
    onehot = keras.ops.one_hot(keras.ops.cast(keras.ops.squeeze(y_true), "int32"), 10)
    return keras.ops.mean(keras.ops.square(keras.ops.relu(0.5 - onehot * y_pred)), -1)


def top_probability(y_true, y_pred):
    return keras.ops.max(y_pred, axis=-1)


class MeanEntropy(keras.metrics.Mean):
    """An unregistered metric class: the mean entropy of the predictions."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        entropy = -keras.ops.sum(y_pred * keras.ops.log(y_pred + 1e-7), axis=-1)
        return super().update_state(entropy, sample_weight)


def compile_with(loss, **kwargs):
    """Compile arguments with fresh metric objects (stateful) for each model."""
    return {
        "optimizer": keras.optimizers.Adam(3e-3),
        "loss": loss,
        "metrics": [MeanEntropy(name="entropy"), top_probability, "accuracy"],
        **kwargs,
    }


CUSTOM_COMPILES = {
    "function": lambda: compile_with(squared_hinge_loss),
    "lambda": lambda: compile_with(
        lambda y_true, y_pred: (
            keras.losses.sparse_categorical_crossentropy(y_true, y_pred) * 2.0
        )
    ),
    "loss_weights_and_weighted_metrics": lambda: compile_with(
        keras.losses.SparseCategoricalCrossentropy(),
        loss_weights=0.5,
        weighted_metrics=[MeanEntropy(name="weighted_entropy")],
    ),
}


@pytest.mark.parametrize("name", sorted(CUSTOM_COMPILES))
def test_custom_loss_and_metrics_train_as_in_model_fit(digits, name):
    plain, cached = twins(compile_kwargs=CUSTOM_COMPILES[name])
    (expected, _), (actual, _) = fit_both(plain, cached, digits[0], val=digits[1])
    assert {"entropy", "top_probability", "val_entropy"} <= set(expected)
    assert_same_history(expected, actual)
    assert_same_weights(plain, cached)


def test_optimizer_state_continues_as_in_model_fit_called_twice(digits):
    plain, cached = twins()
    first = fit_both(plain, cached, digits[0], epochs=1)
    second = fit_both(plain, cached, digits[0], epochs=2)
    for (expected, _), (actual, _) in (first, second):
        assert_same_history(expected, actual)
    steps = -(-len(digits[0][1]) // BATCH)
    assert (
        int(cached.optimizer.iterations) == int(plain.optimizer.iterations) == 3 * steps
    )
    assert_same_weights(plain, cached)
    # And model.fit after fit_cached goes on with the same optimizer.
    plain.fit(*digits[0], epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
    cached.fit(*digits[0], epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
    assert_same_weights(plain, cached)


# === The float16 cache keeps every value's precision ===


def test_tiny_features_stay_float32_and_equal_the_float32_maps(digits):
    # Features around 1e-7: float16 would flush many to 0.
    model = classifier(lambda: backbone(scale=1e-9))
    x = digits[1][0][:16]
    reference = model.get_layer("backbone").predict(x, verbose=0)
    assert 0 < np.abs(reference).max() < FLOAT16_TINY
    cached = kgp.cache_features(model, x, batch_size=4)
    assert cached.maps.dtype == np.float32
    np.testing.assert_array_equal(cached.maps, reference)


def one_tiny_channel(data_format):
    """Channel 0 is the image times 1e-7, channel 1 the image itself.

    Returns the model and, as the reference, its sub-model to the maps.
    """
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 1, use_bias=False, trainable=False)
    maps = conv(keras.layers.Rescaling(1.0 / 255.0)(inputs))
    if data_format == "channels_first":
        maps = keras.layers.Permute((3, 1, 2))(maps)
    pooler = kgp.GlobalAveragePooling(data_format=data_format, name="pooler")
    model = keras.Model(inputs, keras.layers.Dense(10)(pooler(maps)))
    conv.set_weights([np.array([1e-7, 1.0], "float32").reshape(1, 1, 1, 2)])
    return model, keras.Model(inputs, maps)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_a_tiny_channel_beside_large_ones_stays_float32(digits, data_format):
    model, feature_model = one_tiny_channel(data_format)
    x = digits[1][0][:16]
    cached = kgp.cache_features(model, x)
    assert cached.maps.dtype == np.float32
    np.testing.assert_array_equal(cached.maps, feature_model.predict(x, verbose=0))


def test_ordinary_maps_are_float16_within_float16_roundoff(digits):
    model = classifier()
    x = digits[0][0]
    reference = model.get_layer("backbone").predict(x, verbose=0).astype("float64")
    cached = kgp.cache_features(model, x)
    assert cached.maps.dtype == np.float16
    error = np.abs(cached.maps.astype("float64") - reference)
    # Every normal value keeps float16's relative precision...
    normal = np.abs(reference) >= FLOAT16_TINY
    assert np.all(error[normal] <= FLOAT16_ROUNDOFF * np.abs(reference[normal]))
    # ...and the few ReLU values near 0 stay within it relative to their
    # channel's largest value in that image, which float16 was kept for.
    assert np.any((reference != 0) & ~normal)
    scale = np.abs(reference).max(axis=(1, 2), keepdims=True)
    assert np.all(error <= FLOAT16_ROUNDOFF * scale)
