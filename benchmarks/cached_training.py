"""Section 4: cached-feature head training against plain `model.fit`.

The data are scikit-learn's handwritten digits upscaled to 64x64 RGB
(embedded, nothing to download; 80% train, 20% test). The backbone is a
MobileNetV2 trained on the training images for a few epochs first, a
stand-in for ImageNet weights, which the benchmark cannot download (a
randomly initialized one gives features no head can learn from). The
classifier is `kgp.build_classifier(backbone, 10)`, backbone frozen. For
each number of epochs E, one run trains with `model.fit` on the images, the
other with `kgp.fit_cached`, which runs the backbone once and then trains
the head on the cached feature maps; the cached time includes that pass.
Both start from the same weights and seed, and report the full model's
accuracy on the test images. Runs alternate, one seed per repeat.
"""

import statistics
import time

import keras
import numpy as np

import keras_globalpool as kgp
from benchmarks.common import verdict

EPOCHS = (1, 5, 20)
TARGET_SPEEDUP = 5.0
TARGET_EPOCHS = 20
# Accuracy is "equal within noise" if the gap is at most this much, or
# twice the spread of plain training's accuracy over seeds if that is more.
ACCURACY_TOLERANCE = 0.02


def load_data(image_size, samples=None):
    """The digits as RGB images of `image_size`, split 80/20."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype("float32") * (255.0 / 16.0)
    scale = image_size // 8
    images = np.kron(images, np.ones((scale, scale), "float32"))
    images = np.repeat(images[..., None], 3, axis=-1)
    order = np.random.default_rng(0).permutation(len(images))[:samples]
    split = int(0.8 * len(order))
    train, test = order[:split], order[split:]
    return (images[train], digits.target[train]), (images[test], digits.target[test])


def pretrained_backbone(data, image_size, epochs):
    """A MobileNetV2 trained end to end on `data`, then BatchNorm recalibrated."""
    (x, y), _ = data
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    images = keras.Input((image_size, image_size, 3))
    features = backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(images))
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(images, keras.layers.Dense(10, activation="softmax")(pooled))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    # Few steps leave the moving statistics (momentum 0.999) far behind the
    # weights: set them to one large batch's statistics.
    norms = [
        layer
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for norm in norms:
        norm.momentum = 0.0
    backbone(x[:512] / 127.5 - 1, training=True)
    for norm in norms:
        norm.momentum = 0.999
    return backbone


def _model(backbone, image_size, weights):
    model = kgp.build_classifier(
        backbone, 10, input_shape=(image_size, image_size, 3), preprocessing="tf"
    )
    if weights is not None:
        model.set_weights(weights)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _train(method, epochs, seed, backbone, weights, data):
    (x, y), (x_test, y_test) = data
    model = _model(backbone, x.shape[1], weights)
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    if method == "plain":
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    else:
        kgp.fit_cached(model, x, y, batch_size=32, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=64, verbose=0)
    return seconds, accuracy


def run(args):
    image_size = 32 if args.quick else 64
    seeds = range(1 if args.quick else 3)
    data = load_data(image_size, samples=600 if args.quick else None)
    keras.utils.set_random_seed(0)
    backbone = pretrained_backbone(data, image_size, epochs=1 if args.quick else 3)
    results = {(method, e): [] for method in ("plain", "cached") for e in EPOCHS}
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        weights = _model(backbone, image_size, None).get_weights()
        for epochs in EPOCHS:
            for method in ("plain", "cached"):
                seconds, accuracy = _train(
                    method, epochs, seed, backbone, weights, data
                )
                results[method, epochs].append((seconds, accuracy))
                print(
                    f"  seed {seed} E={epochs:2} {method:6} {seconds:6.1f} s  "
                    f"accuracy {accuracy:.3f}",
                    flush=True,
                )
    rows = []
    for epochs in EPOCHS:
        plain, cached = results["plain", epochs], results["cached", epochs]
        speedup = statistics.median(
            p[0] / c[0] for p, c in zip(plain, cached, strict=True)
        )
        plain_accuracy = [a for _, a in plain]
        cached_accuracy = [a for _, a in cached]
        spread = statistics.stdev(plain_accuracy) if len(plain_accuracy) > 1 else 0
        gap = statistics.mean(cached_accuracy) - statistics.mean(plain_accuracy)
        equal = abs(gap) <= max(ACCURACY_TOLERANCE, 2 * spread)
        row = {
            "epochs": epochs,
            "plain s": statistics.median(s for s, _ in plain),
            "cached s": statistics.median(s for s, _ in cached),
            "speed-up": speedup,
            "plain accuracy": statistics.mean(plain_accuracy),
            "cached accuracy": statistics.mean(cached_accuracy),
            "accuracy spread (plain, sd)": spread,
            "accuracy equal": verdict(equal),
        }
        if epochs == TARGET_EPOCHS:
            row["target met"] = verdict(speedup >= TARGET_SPEEDUP and equal)
        rows.append(row)
    (x, _), (x_test, _) = data
    return {
        "title": f"4. Cached-feature training against model.fit (frozen MobileNetV2, "
        f"{image_size}x{image_size}, {len(x)} train / {len(x_test)} test images, "
        f"{len(seeds)} seed(s))",
        "columns": [
            "epochs",
            "plain s",
            "cached s",
            "speed-up",
            "plain accuracy",
            "cached accuracy",
            "accuracy spread (plain, sd)",
            "accuracy equal",
            "target met",
        ],
        "rows": rows,
        "targets": {
            "speed-up": f">= {TARGET_SPEEDUP} at E={TARGET_EPOCHS}, accuracy equal"
        },
    }
