"""Drawing helpers: matplotlib imported lazily, and images made displayable."""

import numpy as np

INSTALL_HINT = 'pip install "keras-globalpool[viz]"'


def require_matplotlib():
    """Returns matplotlib's `Figure` and Agg canvas classes.

    The Agg canvas is attached to each figure, never set as pyplot's global
    backend, so saving overlays neither opens windows nor changes the
    user's matplotlib state.

    Returns:
        Tuple `(Figure, FigureCanvasAgg)`.

    Raises:
        ImportError: matplotlib is not installed; the message says how to
            install it.
    """
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure
    except ImportError as error:
        raise ImportError(
            "Drawing heatmaps needs matplotlib, an optional dependency of "
            f"keras-globalpool. Install it with: {INSTALL_HINT}"
        ) from error
    return matplotlib.figure.Figure, matplotlib.backends.backend_agg.FigureCanvasAgg


def new_figure(figsize):
    """A matplotlib `Figure` drawn by the Agg canvas."""
    figure_class, canvas_class = require_matplotlib()
    figure = figure_class(figsize=figsize, layout="constrained")
    canvas_class(figure)
    return figure


def display_image(image, data_format="channels_last"):
    """An image as matplotlib shows it: `(H, W)` or `(H, W, 3 or 4)` in [0, 1].

    Integer images are divided by 255; float images already in [0, 1] are
    kept, those in [0, 255] are divided by 255, and others are scaled by
    their own minimum and maximum (a constant one shows black).

    Args:
        image: array of shape `(H, W)`, `(H, W, C)` or, with
            `data_format="channels_first"`, `(C, H, W)`; C is 1, 3 or 4.
        data_format: string, `"channels_last"` or `"channels_first"`.
            Defaults to `"channels_last"`.

    Returns:
        float32 NumPy array.
    """
    array = np.asarray(image)
    if array.ndim == 3 and data_format == "channels_first":
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            "`image` must have shape (H, W), or (H, W, C) with 1, 3 or 4 "
            f"channels in {data_format!r} order. Received: image.shape="
            f"{np.shape(image)}"
        )
    if np.issubdtype(array.dtype, np.integer):
        return (array / 255.0).clip(0.0, 1.0).astype("float32")
    array = array.astype("float32")
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return array
    if low >= 0.0 and high <= 255.0:
        return array / 255.0
    return (array - low) / (high - low or 1.0)


def draw_overlay(axes, image, heatmap, alpha, cmap, data_format, vmin=None, vmax=None):
    """Draws the image, then the heatmap stretched over it.

    Returns:
        The heatmap's `AxesImage`, for a colorbar.
    """
    shown = display_image(image, data_format)
    heatmap = np.asarray(heatmap, dtype="float32")
    if heatmap.ndim != 2:
        raise ValueError(
            f"`heatmap` must have shape (H, W). Received: heatmap.shape={heatmap.shape}"
        )
    height, width = shown.shape[:2]
    extent = (0, width, height, 0)
    axes.imshow(shown, cmap="gray" if shown.ndim == 2 else None, extent=extent)
    layer = axes.imshow(
        heatmap, cmap=cmap, alpha=alpha, extent=extent, vmin=vmin, vmax=vmax
    )
    axes.set_xticks([])
    axes.set_yticks([])
    return layer


def add_colorbar(figure, layer, axes):
    """A colorbar for a heatmap layer, drawn opaque though the layer is not."""
    import matplotlib.cm

    mappable = matplotlib.cm.ScalarMappable(norm=layer.norm, cmap=layer.cmap)
    return figure.colorbar(mappable, ax=axes, shrink=0.85)
