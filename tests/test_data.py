"""The data loaders of `keras_globalpool.cli.data`: digits, folders, `.npz` files."""

import numpy as np
import pytest
from PIL import Image

from keras_globalpool.cli import data


@pytest.fixture(scope="module")
def translated():
    return data.load_translated_digits()


def _write_images(root, sizes_by_class, mode="RGB"):
    """Writes random PNGs: `{class: [(height, width), ...]}` under `root`."""
    rng = np.random.default_rng(0)
    for name, sizes in sizes_by_class.items():
        (root / name).mkdir(parents=True)
        for index, (height, width) in enumerate(sizes):
            shape = (height, width, 3) if mode == "RGB" else (height, width)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{index}.png")
    return root


class TestDigits:
    def test_translated_shapes_and_labels(self, translated):
        assert translated.x.shape == (1797, 24, 24, 1)
        assert translated.x.dtype == np.uint8
        assert translated.class_names == tuple("0123456789")
        np.testing.assert_array_equal(np.unique(translated.y), np.arange(10))

    def test_translated_digits_stand_out_of_the_noise(self, translated):
        # Noise stays below 25% of full brightness; every digit is brighter.
        assert translated.x.max(axis=(1, 2, 3)).min() > 0.5 * 255
        assert np.percentile(translated.x, 50) < 0.25 * 255

    def test_translated_positions_vary(self, translated):
        rows, cols = np.nonzero(translated.x[:200, ..., 0] > 160)[1:]
        # Bright pixels reach every border region of the 24x24 canvas.
        assert rows.min() < 4 and rows.max() > 20
        assert cols.min() < 4 and cols.max() > 20

    def test_translated_is_deterministic(self, translated):
        again = data.load_translated_digits()
        other = data.load_translated_digits(seed=1)
        np.testing.assert_array_equal(again.x, translated.x)
        assert np.mean(other.x != translated.x) > 0.5

    def test_translated_sizes(self):
        large = data.load_translated_digits(canvas_size=48, digit_size=16)
        assert large.x.shape == (1797, 48, 48, 1)
        # Upscaled 8x8 digits stay as bright as the originals.
        assert large.x.max(axis=(1, 2, 3)).min() > 0.5 * 255

    def test_translated_digits_are_the_originals_at_their_own_size(self, translated):
        digits = data.load_digits()
        # A digit pixel brighter than the noise is the original's pixel.
        for image, digit in zip(translated.x[:20], digits.x[:20], strict=True):
            matches = [
                (r, c)
                for r in range(17)
                for c in range(17)
                if np.all(
                    np.where(
                        digit > 0.25 * 255 + 1,
                        image[r : r + 8, c : c + 8] == digit,
                        True,
                    )
                )
            ]
            assert matches, "the 8x8 digit is not on its canvas unchanged"

    @pytest.mark.parametrize("digit_size", [0, 25])
    def test_translated_rejects_bad_digit_size(self, digit_size):
        with pytest.raises(ValueError, match="Received: digit_size="):
            data.load_translated_digits(digit_size=digit_size)

    def test_plain_digits(self):
        digits = data.load_digits()
        assert digits.x.shape == (1797, 8, 8, 1)
        assert digits.x.max() == 255


class TestSplits:
    def test_stratified_split(self, translated):
        train, test = data.stratified_split(translated, test_fraction=0.2)
        assert (len(train.y), len(test.y)) == (1438, 359)
        # Every class keeps its share of the test set, to one image.
        expected = np.bincount(translated.y) * 0.2
        assert np.abs(np.bincount(test.y) - expected).max() <= 1
        # No image is in both sets.
        train_rows = {row.tobytes() for row in train.x}
        assert not any(row.tobytes() in train_rows for row in test.x)

    def test_split_is_deterministic(self, translated):
        first = data.stratified_split(translated)[1]
        second = data.stratified_split(translated)[1]
        np.testing.assert_array_equal(first.x, second.x)

    def test_stratified_subset(self, translated):
        subset = data.stratified_subset(translated, 100)
        assert len(subset.y) == 100
        np.testing.assert_array_equal(np.bincount(subset.y), [10] * 10)

    def test_every_class_needs_two_samples(self):
        lonely = data.ImageDataset(
            np.zeros((5, 4, 4, 1), "uint8"), np.array([0, 0, 1, 1, 2]), tuple("abc")
        )
        with pytest.raises(ValueError, match=r"at least 2 samples.*'c': 1"):
            data.check_enough_samples(lonely)

    def test_resize_and_rgb(self):
        digits = data.load_digits()
        rgb = data.to_rgb(data.resize(digits, 16))
        assert rgb.x.shape == (1797, 16, 16, 3)
        assert rgb.x.dtype == np.uint8
        np.testing.assert_array_equal(rgb.x[..., 0], rgb.x[..., 2])


class TestDirectory:
    def test_loads_class_subfolders(self, tmp_path):
        root = _write_images(tmp_path, {"cat": [(10, 12)] * 3, "dog": [(10, 12)] * 2})
        loaded = data.load_directory(root)
        assert loaded.x.shape == (5, 10, 12, 3)
        assert loaded.class_names == ("cat", "dog")
        np.testing.assert_array_equal(loaded.y, [0, 0, 0, 1, 1])
        # The pixels are the ones written, not resized or rescaled.
        written = np.asarray(Image.open(root / "dog" / "1.png"))
        np.testing.assert_array_equal(loaded.x[4], written)

    def test_grayscale_images_keep_one_channel(self, tmp_path):
        root = _write_images(tmp_path, {"a": [(8, 8)] * 2, "b": [(8, 8)] * 2}, "L")
        assert data.load_directory(root).x.shape == (4, 8, 8, 1)

    def test_image_size_resizes_mismatched_images(self, tmp_path):
        root = _write_images(tmp_path, {"a": [(8, 8), (9, 9)], "b": [(10, 6)]})
        assert data.load(root, image_size=16).x.shape == (3, 16, 16, 3)

    def test_rejects_mismatched_sizes(self, tmp_path):
        root = _write_images(tmp_path, {"a": [(8, 8), (8, 8)], "b": [(10, 6)]})
        with pytest.raises(
            ValueError, match=r"2 different sizes.*8x8.*10x6.*image-size"
        ):
            data.load_directory(root)

    def test_rejects_missing_folder(self, tmp_path):
        with pytest.raises(ValueError, match="does not exist"):
            data.load_directory(tmp_path / "nowhere")

    def test_rejects_one_class(self, tmp_path):
        root = _write_images(tmp_path, {"only": [(8, 8)] * 3})
        with pytest.raises(
            ValueError, match=r"at least 2 class subfolders.*\['only'\]"
        ):
            data.load_directory(root)


class TestNpz:
    def test_loads_arrays(self, tmp_path):
        path = tmp_path / "set.npz"
        x = np.arange(4 * 5 * 6).reshape(4, 5, 6) % 256
        np.savez(path, x=x.astype("uint8"), y=np.array(["b", "a", "b", "a"]))
        loaded = data.load_npz(path)
        assert loaded.x.shape == (4, 5, 6, 1)
        assert loaded.class_names == ("a", "b")
        np.testing.assert_array_equal(loaded.y, [1, 0, 1, 0])

    @pytest.mark.parametrize(
        "arrays, message",
        [
            ({"x": np.zeros((3, 4, 4))}, "must hold arrays 'x' and 'y'"),
            ({"x": np.zeros((3, 4, 4)), "y": [0, 1]}, "3 images and 2 labels"),
            ({"x": np.full((2, 4, 4), 300.0), "y": [0, 1]}, r"\[0, 255\]"),
            ({"x": np.zeros((2, 4)), "y": [0, 1]}, "Received: x.shape=\\(2, 4\\)"),
        ],
    )
    def test_rejects_bad_arrays(self, tmp_path, arrays, message):
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message):
            data.load_npz(path)

    def test_rejects_mismatched_image_sizes(self, tmp_path):
        path = tmp_path / "ragged.npz"
        ragged = np.empty(2, dtype=object)
        ragged[:] = [np.zeros((4, 4)), np.zeros((5, 5))]
        np.savez(path, x=ragged, y=[0, 1])
        with pytest.raises(ValueError, match="mismatched sizes"):
            data.load_npz(path)


def test_load_rejects_unknown_source(tmp_path):
    with pytest.raises(ValueError, match=r"one of \{'translated-digits', 'digits'\}"):
        data.load(tmp_path / "missing")
