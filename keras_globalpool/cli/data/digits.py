"""The embedded data: scikit-learn's handwritten digits, plain or translated.

`load_digits` ships inside scikit-learn, so nothing is downloaded. Plain
8x8 digits are centred and too easy to tell pooling heads apart; the
translated variant tests what global pooling claims to give, translation
invariance: each digit lands at a random place on a larger, noisy canvas.
"""

import numpy as np

from keras_globalpool.cli.data.dataset import ImageDataset

_CLASS_NAMES = tuple(str(d) for d in range(10))
# sklearn's digits hold 4-bit intensities: 0 to 16.
_DIGITS_MAX = 16.0


def digit_pixels():
    """The 1,797 digits of scikit-learn as float32 pixels in [0, 255], and labels.

    The tasks of `compare` compose their images from them.

    Returns:
        Tuple `(images, labels)`: float32 of shape `(1797, 8, 8)`, not
        rounded, and int labels 0 to 9.

    Example:

    >>> from keras_globalpool.cli.data.digits import digit_pixels
    >>> images, labels = digit_pixels()
    >>> images.shape, float(images.max()), int(labels.max())
    ((1797, 8, 8), 255.0, 9)
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return bunch.images.astype("float32") * (255.0 / _DIGITS_MAX), bunch.target


def load_digits():
    """Loads the 1,797 handwritten digits as 8x8 grayscale images.

    Returns:
        `ImageDataset` with `x` of shape `(1797, 8, 8, 1)`, `uint8` in
        [0, 255], and labels 0 to 9.

    Example:

    >>> from keras_globalpool.cli import data as kgp_data
    >>> kgp_data.load_digits().x.shape
    (1797, 8, 8, 1)
    """
    images, labels = digit_pixels()
    return ImageDataset(
        x=np.round(images)[..., None].astype("uint8"),
        y=labels.astype("int64"),
        class_names=_CLASS_NAMES,
        description="digits: scikit-learn load_digits, 8x8",
    )


def load_translated_digits(canvas_size=24, digit_size=8, noise=0.25, seed=0):
    """Loads the digits placed at random on a larger, noisy canvas.

    Each 8x8 digit is resized (bilinear) to `digit_size` pixels square,
    unless it is 8 already, and pasted at a uniformly random position on a
    `canvas_size` square of uniform background noise; a pixel keeps the
    brighter of digit and noise.
    A flatten head must learn every digit at every position, while a global
    pooling head sees the same features wherever the digit lies.

    Args:
        canvas_size: int. The side of the output images. Defaults to `24`.
        digit_size: int, at most `canvas_size`. The side of the pasted
            digit. Defaults to `8`, the digits' own size.
        noise: float in [0, 1]. The noise's upper bound, as a fraction of
            full brightness. Defaults to `0.25`.
        seed: int. Fixes positions and noise. Defaults to `0`.

    Returns:
        `ImageDataset` with `x` of shape `(1797, canvas_size, canvas_size,
        1)`, `uint8` in [0, 255], and labels 0 to 9.

    Example:

    >>> from keras_globalpool.cli import data as kgp_data
    >>> kgp_data.load_translated_digits().x.shape
    (1797, 24, 24, 1)
    """
    import keras

    if not 1 <= digit_size <= canvas_size:
        raise ValueError(
            "`digit_size` must be between 1 and `canvas_size` "
            f"({canvas_size}). Received: digit_size={digit_size!r}"
        )
    if not 0 <= noise <= 1:
        raise ValueError(f"`noise` must be in [0, 1]. Received: noise={noise!r}")
    images, labels = digit_pixels()
    digits = images[..., None]
    if digit_size != digits.shape[1]:
        digits = keras.ops.convert_to_numpy(
            keras.ops.image.resize(
                digits, (digit_size, digit_size), interpolation="bilinear"
            )
        )
    rng = np.random.default_rng(seed)
    canvas = rng.uniform(
        0.0, noise * 255.0, size=(len(labels), canvas_size, canvas_size, 1)
    ).astype("float32")
    corners = rng.integers(0, canvas_size - digit_size + 1, size=(len(labels), 2))
    for image, digit, (row, col) in zip(canvas, digits, corners, strict=True):
        window = image[row : row + digit_size, col : col + digit_size]
        np.maximum(window, digit, out=window)
    return ImageDataset(
        x=np.round(np.clip(canvas, 0.0, 255.0)).astype("uint8"),
        y=labels.astype("int64"),
        class_names=_CLASS_NAMES,
        description=(
            f"translated digits: scikit-learn load_digits, {digit_size}x{digit_size} "
            f"at random on a {canvas_size}x{canvas_size} noisy canvas (seed {seed})"
        ),
    )
