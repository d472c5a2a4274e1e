"""`overlay_grid`: heatmaps of several heads on the same images, one PNG."""

import keras

from keras_globalpool.pooler import ATTENTION_TYPES
from keras_globalpool.viz.attention_maps import attention_maps
from keras_globalpool.viz.cam import (
    METHOD_LABELS,
    class_activation_maps,
    resolve_method,
)
from keras_globalpool.viz.plotting import add_colorbar, draw_overlay, new_figure


def overlay_grid(
    models_by_head,
    images,
    path,
    class_index=None,
    alpha=0.5,
    cmap="jet",
    data_format=None,
):
    """Saves a PNG grid: one row per head, one column per image.

    Each cell shows the image under the map that explains its head: the
    attention scores for a model with an attention pooling layer, else the
    CAM, or Grad-CAM where CAM does not apply (see
    `kgp.class_activation_maps`). Every map is scaled to [0, 1], so one
    colorbar serves the grid. Row labels name the head and the map. Needs
    matplotlib: `pip install "keras-globalpool[viz]"`.

    Args:
        models_by_head: dict mapping a head's name (such as `"avg"`) to its
            trained `keras.Model`. All take the same images.
        images: array of shape `(batch, height, width, channels)`, or
            channels first with `data_format="channels_first"`. A few images
            make a readable grid.
        path: string or path-like. Where to write the PNG.
        class_index: `None` for each model's predicted class, or as in
            `kgp.class_activation_maps`. Defaults to `None`.
        alpha: float in [0, 1]. The heatmaps' opacity. Defaults to `0.5`.
        cmap: string. A matplotlib colormap name. Defaults to `"jet"`.
        data_format: string, `"channels_last"` or `"channels_first"`, the
            layout of `images`. Defaults to
            `keras.config.image_data_format()`.

    Returns:
        `path`.

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=4)])
    >>> avg_model = kgp.build_classifier(backbone, 3, input_shape=(32, 32, 3))
    >>> max_model = kgp.build_classifier(
    ...     backbone, 3, input_shape=(32, 32, 3), pooling="max")
    >>> x_test = np.random.randint(0, 256, (4, 32, 32, 3), dtype="uint8")
    >>> kgp.viz.overlay_grid({"avg": avg_model, "max": max_model},
    ...                      x_test[:2], "heads.png")
    'heads.png'
    """
    if not models_by_head:
        raise ValueError(
            "`models_by_head` must map at least one head name to a model. "
            f"Received: models_by_head={models_by_head!r}"
        )
    _check_images(images)
    rows = {
        head: head_heatmaps(model, images, class_index)
        for head, model in models_by_head.items()
    }
    return heatmap_grid(rows, images, path, alpha, cmap, data_format)


def _check_images(images):
    if len(images) == 0:
        raise ValueError(
            f"`images` must hold at least one image. Received: {len(images)} images"
        )


def heatmap_grid(
    rows, images, path, alpha=0.5, cmap="jet", data_format=None, captions=None
):
    """Saves the grid of `overlay_grid` from heatmaps computed beforehand.

    `compare` uses it to draw each head's maps right after training it,
    without keeping every model alive.

    Args:
        rows: dict mapping a head's name to `(maps, label)`, as
            `head_heatmaps` returns them.
        images: the images the maps explain, as in `overlay_grid`.
        path: string or path-like. Where to write the PNG.
        alpha: float in [0, 1]. The heatmaps' opacity. Defaults to `0.5`.
        cmap: string. A matplotlib colormap name. Defaults to `"jet"`.
        data_format: string, the layout of `images`. Defaults to
            `keras.config.image_data_format()`.
        captions: optional dict mapping a head's name to one string per
            image, written under its cell, such as the true and predicted
            class.

    Returns:
        `path`.
    """
    figure = heatmap_grid_figure(rows, images, alpha, cmap, data_format, captions)
    figure.savefig(path, format="png")
    return path


def heatmap_grid_figure(
    rows, images, alpha=0.5, cmap="jet", data_format=None, captions=None
):
    """The matplotlib `Figure` that `heatmap_grid` saves."""
    _check_images(images)
    data_format = data_format or keras.config.image_data_format()
    captions = captions or {}
    columns = len(images)
    height = 1.9 if captions else 1.6
    figure = new_figure(figsize=(1.6 * columns + 1.2, height * len(rows)))
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for row, (head, (maps, label)) in enumerate(rows.items()):
        for column, axes in enumerate(grid[row]):
            layer = draw_overlay(
                axes, images[column], maps[column], alpha, cmap, data_format, 0, 1
            )
            if head in captions:
                axes.set_xlabel(captions[head][column], fontsize=8)
        grid[row, 0].set_ylabel(f"{head}\n{label}", fontsize=9)
    for column in range(columns):
        grid[0, column].set_title(f"image {column}", fontsize=9)
    add_colorbar(figure, layer, grid)
    return figure


def head_heatmaps(model, images, class_index=None):
    """The maps that explain a model's head, scaled to [0, 1], and their name.

    Returns:
        Tuple `(maps, label)`: `label` is `"attention map"`, `"CAM"` or
        `"Grad-CAM"`.
    """
    if any(isinstance(layer, ATTENTION_TYPES) for layer in model.layers):
        return attention_maps(model, images, normalize=True), "attention map"
    label = METHOD_LABELS[resolve_method(model)]
    return class_activation_maps(model, images, class_index), label
