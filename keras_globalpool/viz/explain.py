"""Heatmap overlays for a saved model's predictions, as `keras-globalpool explain`
writes them."""

import pathlib

import keras
import numpy as np
from keras import ops
from PIL import Image

from keras_globalpool.pooler import ATTENTION_TYPES
from keras_globalpool.registry import custom_objects
from keras_globalpool.viz.attention_maps import attention_maps
from keras_globalpool.viz.cam import (
    METHOD_LABELS,
    class_activation_maps,
    explained_layer,
    resolve_method,
)
from keras_globalpool.viz.layout_errors import channels_first_cpu_errors
from keras_globalpool.viz.overlay import save_overlay
from keras_globalpool.viz.plotting import require_matplotlib
from keras_globalpool.viz.pooling_graph import data_format_of, model_input

_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


def explain(
    model_path, image_paths, out_dir, class_index=None, method="auto", overwrite=False
):
    """Writes heatmap overlays that explain a saved model's predictions.

    For each image it writes `{stem}_cam.png` or `{stem}_gradcam.png`, the
    map of `kgp.class_activation_maps` for the predicted class (or
    `class_index`) over the image, titled with the class and its score;
    for a model with an attention pooling layer it also writes
    `{stem}_attention.png`, the attention scores scaled to [0, 1]. Images
    are resized to the model's input size when it has one and fed as 0-255
    floats, as models that rescale inside themselves (such as
    `kgp.build_classifier`'s) expect. Each image gets its own names (see
    `output_stems`). The model and every image are read, and every output
    checked, before anything is written: an existing file is replaced only
    with `overwrite=True`, and an input image never. Needs matplotlib:
    `pip install "keras-globalpool[viz]"`.

    Args:
        model_path: string or path-like. A `.keras` file.
        image_paths: list of image file paths (PNG, JPEG, ...).
        out_dir: string or path-like. Created if missing.
        class_index: optional int. Explain this class instead of the
            predicted one.
        method: string, one of `"auto"`, `"cam"`, `"gradcam"`. Defaults to
            `"auto"`.
        overwrite: bool. Replace output files that exist. Defaults to
            `False`: an existing output is refused.

    Returns:
        list of `pathlib.Path`, the PNGs written.

    Raises:
        ValueError: a model or image that cannot be read (named), or an
            output that exists (without `overwrite`) or is an input image.

    Example:

    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3)(inputs)
    >>> x = kgp.GlobalAveragePooling(name="pooler")(x)
    >>> keras.Model(inputs, keras.layers.Dense(2)(x)).save("model.keras")
    >>> keras.utils.save_img("cat.png", np.zeros((8, 8, 3), "uint8"))
    >>> explain("model.keras", ["cat.png"], "out", overwrite=True)
    [PosixPath('out/cat_cam.png')]
    """
    require_matplotlib()
    image_paths = [pathlib.Path(path) for path in image_paths]
    model = _load_model(model_path)
    method = resolve_method(model, method)
    data_format = data_format_of(explained_layer(model))
    attention = (isinstance(layer, ATTENTION_TYPES) for layer in model.layers)
    has_attention = any(attention)
    images = [_load_image(path, model, data_format) for path in image_paths]
    kinds = (method, "attention") if has_attention else (method,)
    out_dir = pathlib.Path(out_dir)
    outputs = [
        {kind: out_dir / f"{stem}_{kind}.png" for kind in kinds}
        for stem in output_stems(image_paths)
    ]
    _check_outputs(
        [path for paths in outputs for path in paths.values()], image_paths, overwrite
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_path, image, paths in zip(image_paths, images, outputs, strict=True):
        image = image[None]
        with channels_first_cpu_errors(model):
            scores = ops.convert_to_numpy(model(image, training=False))[0]
        target = int(np.argmax(scores)) if class_index is None else class_index
        heatmap = class_activation_maps(model, image, target, method)[0]
        title = f"{image_path.name}: class {target} (score {scores[target]:.2f})"
        save_overlay(
            image[0],
            heatmap,
            paths[method],
            title=f"{title}, {METHOD_LABELS[method]}",
            data_format=data_format,
        )
        written.append(paths[method])
        if has_attention:
            heatmap = attention_maps(model, image, normalize=True)[0]
            save_overlay(
                image[0],
                heatmap,
                paths["attention"],
                title=f"{title}, attention",
                data_format=data_format,
            )
            written.append(paths["attention"])
    return written


def output_stems(image_paths):
    """One distinct output name stem per image, however the inputs are named.

    An image keeps its file's stem unless an earlier image took it; a
    repeat gets `-1`, `-2`, ..., skipping every stem an input has, so
    `a.png`, `a.jpg` and `a-1.png` give `a`, `a-2` and `a-1`. Stems are
    compared case-insensitively, as macOS and Windows compare file names.

    Args:
        image_paths: list of `pathlib.Path`.

    Returns:
        list of strings, one per image.

    Example:

    >>> output_stems([pathlib.Path(p) for p in ["a.png", "a.jpg", "a-1.png"]])
    ['a', 'a-2', 'a-1']
    """
    own = {path.stem.casefold() for path in image_paths}
    taken, stems = set(), []
    for path in image_paths:
        stem, number = path.stem, 0
        while stem.casefold() in taken or (number and stem.casefold() in own):
            number += 1
            stem = f"{path.stem}-{number}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def _check_outputs(outputs, inputs, overwrite):
    """Raises a `ValueError` before an output could replace a file it must not."""
    resolved_inputs = {path.resolve() for path in inputs}
    for path in outputs:
        if path.resolve() in resolved_inputs:
            raise ValueError(
                "`--out` must not be where an output replaces an input image. "
                f"Received: {str(path)!r}, which is both; choose another `--out`"
            )
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ValueError(
            "`--out` must not hold the outputs already. Received: "
            f"{existing[0]!r}{more}, which exist; pass `--overwrite` to replace "
            "them, or choose another `--out`"
        )


def _load_model(path):
    try:
        return keras.models.load_model(path, custom_objects=custom_objects())
    except Exception as error:
        # A broken file fails anywhere inside Keras, with any error type.
        reason = " ".join(str(error).split())
        raise ValueError(
            "`model` must be a .keras file Keras can load. Received: "
            f"model={str(path)!r}: {type(error).__name__}: {reason}"
        ) from error


def _load_image(path, model, data_format):
    """Reads an image file at the model's input size, channels and layout."""
    shape = model_input(model).shape[1:]
    if data_format == "channels_last":
        height, width, channels = shape
    else:
        channels, height, width = shape
    size = None if height is None or width is None else (height, width)
    try:
        image = keras.utils.load_img(
            path, color_mode=_COLOR_MODES.get(channels, "rgb"), target_size=size
        )
        # Pillow decodes lazily: a truncated file fails only here.
        return keras.utils.img_to_array(image, data_format=data_format)
    except (OSError, Image.DecompressionBombError) as error:
        reason = error.strerror if getattr(error, "strerror", None) else error
        raise ValueError(
            f"`images` must be readable image files. Received: {str(path)!r}: {reason}"
        ) from error
