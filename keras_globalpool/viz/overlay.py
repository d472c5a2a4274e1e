"""`save_overlay`: one image with its heatmap over it, as a PNG."""

from keras_globalpool.viz.plotting import add_colorbar, draw_overlay, new_figure


def save_overlay(
    image,
    heatmap,
    path,
    alpha=0.5,
    cmap="jet",
    title=None,
    data_format="channels_last",
):
    """Saves a PNG of `image` with `heatmap` over it and a colorbar.

    Needs matplotlib: `pip install "keras-globalpool[viz]"`. The heatmap is
    stretched over the whole image, so a map at feature-map resolution
    lines up too; the colorbar shows the heatmap's own range.

    Args:
        image: array of shape `(H, W)`, `(H, W, C)` or, with
            `data_format="channels_first"`, `(C, H, W)`; C is 1, 3 or 4.
            Integer images are read as 0-255; float ones are shown as they
            are if in [0, 1], divided by 255 if in [0, 255], and min-max
            scaled otherwise.
        heatmap: array of shape `(h, w)`, such as one map from
            `kgp.class_activation_maps` or `kgp.attention_maps`.
        path: string or path-like. Where to write the PNG.
        alpha: float in [0, 1]. The heatmap's opacity. Defaults to `0.5`.
        cmap: string. A matplotlib colormap name. Defaults to `"jet"`.
        title: optional string above the image.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `"channels_last"`.

    Returns:
        `path`.

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=4)])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(32, 32, 3))
    >>> images = np.random.randint(0, 256, (2, 32, 32, 3), dtype="uint8")
    >>> maps = kgp.class_activation_maps(model, images)
    >>> kgp.save_overlay(images[0], maps[0], "cam.png")
    'cam.png'
    """
    figure = overlay_figure(image, heatmap, alpha, cmap, title, data_format)
    figure.savefig(path, format="png")
    return path


def overlay_figure(
    image, heatmap, alpha=0.5, cmap="jet", title=None, data_format="channels_last"
):
    """The matplotlib `Figure` that `save_overlay` saves."""
    figure = new_figure(figsize=(3.6, 3.0))
    axes = figure.add_subplot()
    layer = draw_overlay(axes, image, heatmap, alpha, cmap, data_format)
    add_colorbar(figure, layer, axes)
    if title is not None:
        axes.set_title(title, fontsize=9)
    return figure
