"""The `explain` subcommand: heatmap overlays for a saved model's predictions."""

import collections
import pathlib

import keras
import numpy as np
from keras import ops

from keras_globalpool.layers import GlobalAttentionPooling
from keras_globalpool.registry import custom_objects
from keras_globalpool.viz.attention_maps import attention_maps
from keras_globalpool.viz.cam import (
    METHOD_LABELS,
    METHODS,
    class_activation_maps,
    explained_layer,
    resolve_method,
)
from keras_globalpool.viz.overlay import save_overlay
from keras_globalpool.viz.plotting import require_matplotlib
from keras_globalpool.viz.pooling_graph import data_format_of, model_input

_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


def explain(model_path, image_paths, out_dir, class_index=None, method="auto"):
    """Writes heatmap overlays that explain a saved model's predictions.

    For each image it writes `{stem}_cam.png` or `{stem}_gradcam.png`, the
    map of `kgp.class_activation_maps` for the predicted class (or
    `class_index`) over the image, titled with the class and its score;
    for a model with `GlobalAttentionPooling` it also writes
    `{stem}_attention.png`, the attention scores scaled to [0, 1]. Images
    are resized to the model's input size when it has one and fed as 0-255
    floats, as models that rescale inside themselves (such as
    `kgp.build_classifier`'s) expect. A repeated file stem gets a `-1`,
    `-2`, ... suffix. Needs matplotlib: `pip install "keras-globalpool[viz]"`.

    Args:
        model_path: string or path-like. A `.keras` file.
        image_paths: list of image file paths (PNG, JPEG, ...).
        out_dir: string or path-like. Created if missing.
        class_index: optional int. Explain this class instead of the
            predicted one.
        method: string, one of `"auto"`, `"cam"`, `"gradcam"`. Defaults to
            `"auto"`.

    Returns:
        list of `pathlib.Path`, the PNGs written.

    Example:

    >>> explain("model.keras", ["cat.png"], "out")
    [PosixPath('out/cat_cam.png')]
    """
    require_matplotlib()
    model = keras.models.load_model(model_path, custom_objects=custom_objects())
    method = resolve_method(model, method)
    data_format = data_format_of(explained_layer(model))
    has_attention = any(
        isinstance(layer, GlobalAttentionPooling) for layer in model.layers
    )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = collections.Counter()
    written = []
    for image_path in map(pathlib.Path, image_paths):
        image = _load_image(image_path, model, data_format)[None]
        scores = ops.convert_to_numpy(model(image, training=False))[0]
        target = int(np.argmax(scores)) if class_index is None else class_index
        heatmap = class_activation_maps(model, image, target, method)[0]
        stem = image_path.stem
        if stems[stem]:
            stem = f"{stem}-{stems[image_path.stem]}"
        stems[image_path.stem] += 1
        title = f"{image_path.name}: class {target} (score {scores[target]:.2f})"
        path = out_dir / f"{stem}_{method}.png"
        save_overlay(
            image[0],
            heatmap,
            path,
            title=f"{title}, {METHOD_LABELS[method]}",
            data_format=data_format,
        )
        written.append(path)
        if has_attention:
            path = out_dir / f"{stem}_attention.png"
            heatmap = attention_maps(model, image, normalize=True)[0]
            save_overlay(
                image[0],
                heatmap,
                path,
                title=f"{title}, attention",
                data_format=data_format,
            )
            written.append(path)
    return written


def _load_image(path, model, data_format):
    """Reads an image file at the model's input size, channels and layout."""
    shape = model_input(model).shape[1:]
    if data_format == "channels_last":
        height, width, channels = shape
    else:
        channels, height, width = shape
    size = None if height is None or width is None else (height, width)
    image = keras.utils.load_img(
        path, color_mode=_COLOR_MODES.get(channels, "rgb"), target_size=size
    )
    return keras.utils.img_to_array(image, data_format=data_format)


def add_explain_parser(subparsers):
    """Registers the `explain` subcommand on an argparse subparsers object.

    Args:
        subparsers: the object `ArgumentParser.add_subparsers()` returns.

    Returns:
        The subcommand's `ArgumentParser`. Its parsed arguments carry
        `func`, which runs the command and returns the exit status.

    Example:

    >>> subparsers = parser.add_subparsers(dest="command", required=True)
    >>> add_explain_parser(subparsers)
    >>> args = parser.parse_args(["explain", "m.keras", "a.png", "--out", "o"])
    >>> args.func(args)
    """
    parser = subparsers.add_parser(
        "explain",
        help="Write CAM / Grad-CAM and attention overlays for images.",
        description=(
            "Write one PNG per image with the class activation map (CAM for "
            "GAP -> Dense heads, Grad-CAM otherwise) over it, plus the "
            "attention map for models with attention pooling."
        ),
    )
    parser.add_argument("model", help="A saved .keras model.")
    parser.add_argument("images", nargs="+", help="Image files to explain.")
    parser.add_argument("--out", required=True, help="Output directory.")
    parser.add_argument(
        "--class-index",
        type=int,
        default=None,
        help="Explain this class instead of the predicted one.",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="auto: CAM where the head allows it, else Grad-CAM.",
    )
    parser.set_defaults(func=run_explain)
    return parser


def run_explain(args):
    """Runs `explain` for parsed arguments and prints the files written."""
    for path in explain(
        args.model, args.images, args.out, args.class_index, args.method
    ):
        print(path)
    return 0
