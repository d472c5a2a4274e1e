"""Tests for `kgp.save_overlay` and `kgp.viz.overlay_grid`."""

import sys

import keras
import numpy as np
import pytest

import keras_globalpool as kgp
from keras_globalpool.viz.overlay import overlay_figure
from keras_globalpool.viz.overlay_grid import head_heatmaps, heatmap_grid_figure
from keras_globalpool.viz.plotting import display_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def corner_heatmap(size=16):
    heatmap = np.zeros((size, size), "float32")
    heatmap[:4, :4] = 1.0
    return heatmap


class TestSaveOverlay:
    def test_writes_png_with_image_heatmap_and_colorbar(self, tmp_path):
        image = np.full((16, 16, 3), 128, dtype="uint8")
        path = tmp_path / "overlay.png"

        returned = kgp.save_overlay(image, corner_heatmap(), path, title="cat")

        assert returned == path
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        figure = overlay_figure(image, corner_heatmap(), title="cat")
        image_axes, colorbar_axes = figure.axes
        drawn_image, drawn_heatmap = image_axes.get_images()
        np.testing.assert_allclose(drawn_image.get_array(), image / 255.0)
        np.testing.assert_array_equal(drawn_heatmap.get_array(), corner_heatmap())
        assert drawn_heatmap.get_alpha() == 0.5
        assert colorbar_axes.get_ylim() == (0.0, 1.0)
        assert image_axes.get_title() == "cat"

    def test_hot_region_is_drawn_where_the_heatmap_is_high(self, tmp_path):
        import matplotlib.image

        path = kgp.save_overlay(
            np.full((16, 16), 0.5), corner_heatmap(), tmp_path / "o.png", alpha=1.0
        )

        pixels = matplotlib.image.imread(path)[..., :3]
        # "jet" maps 1 to dark red and 0 to dark blue; the axes fill the
        # left of the figure, the top-left quarter of the image is the hot one.
        reddish = (pixels[..., 0] > 0.4) & (pixels[..., 2] < 0.2)
        bluish = (pixels[..., 2] > 0.4) & (pixels[..., 0] < 0.2)
        rows, columns = np.nonzero(reddish)
        blue_rows, blue_columns = np.nonzero(bluish)
        assert rows.size and blue_rows.size
        assert np.median(rows) < np.median(blue_rows)
        assert np.median(columns) < np.median(blue_columns)

    def test_channels_first_image(self):
        image = np.random.default_rng(0).uniform(0, 1, (3, 8, 10)).astype("float32")
        figure = overlay_figure(image, np.zeros((8, 10)), data_format="channels_first")
        drawn_image, _ = figure.axes[0].get_images()
        np.testing.assert_allclose(drawn_image.get_array(), np.moveaxis(image, 0, -1))

    @pytest.mark.parametrize(
        "image, expected",
        [
            (np.array([[0, 255]], "uint8"), [[0.0, 1.0]]),
            (np.array([[0.25, 1.0]]), [[0.25, 1.0]]),
            (np.array([[51.0, 255.0]]), [[0.2, 1.0]]),
            (np.array([[-1.0, 1.0]]), [[0.0, 1.0]]),
            (np.array([[-3.0, -3.0]]), [[0.0, 0.0]]),
        ],
    )
    def test_display_scaling(self, image, expected):
        np.testing.assert_allclose(display_image(image), expected, rtol=1e-6)

    @pytest.mark.parametrize("shape", [(4,), (4, 4, 2), (1, 4, 4, 3)])
    def test_bad_image_shape_raises(self, shape, tmp_path):
        with pytest.raises(ValueError, match="Received: image.shape="):
            kgp.save_overlay(np.zeros(shape), np.zeros((4, 4)), tmp_path / "x.png")

    def test_bad_heatmap_shape_raises(self, tmp_path):
        with pytest.raises(ValueError, match="Received: heatmap.shape="):
            kgp.save_overlay(np.zeros((4, 4)), np.zeros((1, 4, 4)), tmp_path / "x.png")

    def test_missing_matplotlib_names_the_viz_extra(self, monkeypatch, tmp_path):
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        with pytest.raises(ImportError, match=r'pip install "keras-globalpool\[viz\]"'):
            kgp.save_overlay(np.zeros((4, 4)), np.zeros((4, 4)), tmp_path / "x.png")
        assert not (tmp_path / "x.png").exists()


def small_model(pooling):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = pooling(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


class TestOverlayGrid:
    def test_one_row_per_head_labelled_with_its_map(self, tmp_path):
        keras.utils.set_random_seed(0)
        models = {
            "avg": small_model(kgp.GlobalAveragePooling()),
            "max": small_model(kgp.GlobalMaxPooling()),
            "attention": small_model(kgp.GlobalAttentionPooling(reduction=2)),
        }
        images = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3))

        path = kgp.viz.overlay_grid(models, images, tmp_path / "grid.png")

        assert path.read_bytes()[:8] == PNG_SIGNATURE
        rows = {head: head_heatmaps(m, images) for head, m in models.items()}
        figure = heatmap_grid_figure(rows, images)
        cells, colorbar_axes = figure.axes[:-1], figure.axes[-1]
        assert len(cells) == 6
        labels = [cells[row * 2].get_ylabel() for row in range(3)]
        assert labels == ["avg\nCAM", "max\nGrad-CAM", "attention\nattention map"]
        expected = kgp.attention_maps(models["attention"], images, normalize=True)
        _, heatmap = cells[5].get_images()
        np.testing.assert_allclose(heatmap.get_array(), expected[1], atol=1e-6)
        assert colorbar_axes.get_ylim() == (0.0, 1.0)

    def test_empty_models_raise(self, tmp_path):
        with pytest.raises(ValueError, match="Received: models_by_head={}"):
            kgp.viz.overlay_grid({}, np.zeros((1, 8, 8, 3)), tmp_path / "g.png")

    def test_no_images_raise(self, tmp_path):
        models = {"avg": small_model(kgp.GlobalAveragePooling())}
        with pytest.raises(ValueError, match="Received: 0 images"):
            kgp.viz.overlay_grid(models, np.zeros((0, 8, 8, 3)), tmp_path / "g.png")
