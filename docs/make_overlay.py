"""Regenerates docs/overlay.png, the class activation map shown in the README.

It trains a small CNN with a `kgp.GlobalAveragePooling` head to tell noise
from noise with a bright square, saves it as a `.keras` file, and runs the
`explain` subcommand's code on a new image with a square. Run it from the
repository root, with the `viz` extra installed (about 20 s on a CPU):

    python docs/make_overlay.py
"""

import pathlib
import shutil
import tempfile

import keras
import numpy as np

import keras_globalpool as kgp
from keras_globalpool.viz.explain import explain

SIZE, SIDE = 64, 12
OUTPUT = pathlib.Path(__file__).resolve().parent / "overlay.png"


def bright_squares(count, rng):
    """Gray noise (0-255); class 1 images hold a bright square somewhere."""
    images = rng.uniform(0, 128, (count, SIZE, SIZE, 1)).astype("float32")
    labels = rng.integers(0, 2, count)
    for image, label in zip(images, labels, strict=True):
        if label:
            top, left = rng.integers(0, SIZE - SIDE + 1, 2)
            image[top : top + SIDE, left : left + SIDE] = 255.0
    return images, labels


def square_detector():
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = kgp.GlobalAveragePooling(name="pooler")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="square_detector")


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels = bright_squares(1024, rng)
    model = square_detector()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=8, batch_size=32, verbose=0)

    image = rng.uniform(0, 128, (SIZE, SIZE, 1)).astype("float32")
    image[38 : 38 + SIDE, 14 : 14 + SIDE] = 255.0
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        model.save(work / "squares.keras")
        keras.utils.save_img(work / "square.png", image)
        # The same as: keras-globalpool explain squares.keras square.png --out out
        (written,) = explain(
            work / "squares.keras", [work / "square.png"], work / "out"
        )
        shutil.copyfile(written, OUTPUT)
    print(f"Wrote {OUTPUT} ({OUTPUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
