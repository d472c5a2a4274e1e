"""Broken, hidden and ambiguous data: clear `ValueError`s naming the file."""

import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from keras_globalpool.cli import data

# What macOS writes beside each file on a foreign disk: not an image.
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "


def _write_images(root, classes=("a", "b"), per_class=3, size=(8, 8)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{index}.png")
    return root


class TestHiddenEntries:
    def test_hidden_folders_and_files_are_skipped(self, tmp_path):
        root = _write_images(tmp_path)
        expected = data.load_directory(root)
        (root / ".thumbnails").mkdir()
        Image.new("RGB", (8, 8)).save(root / ".thumbnails" / "t.png")
        (root / "a" / "._0.png").write_bytes(APPLE_DOUBLE)
        (root / "b" / ".cache").mkdir()
        Image.new("RGB", (5, 5)).save(root / "b" / ".cache" / "small.png")
        # A folder whose name looks like an image is a folder, not an image.
        (root / "b" / "album.png").mkdir()

        loaded = data.load_directory(root)

        assert loaded.class_names == ("a", "b")
        np.testing.assert_array_equal(loaded.x, expected.x)
        np.testing.assert_array_equal(loaded.y, expected.y)

    def test_pixels_match_pillow_after_skipping(self, tmp_path):
        root = _write_images(tmp_path, per_class=2)
        (root / "a" / "._1.png").write_bytes(APPLE_DOUBLE)
        loaded = data.load_directory(root)
        for index, path in enumerate(sorted(root.glob("[ab]/[0-9].png"))):
            np.testing.assert_array_equal(loaded.x[index], np.asarray(Image.open(path)))

    def test_a_folder_of_hidden_classes_only_has_no_classes(self, tmp_path):
        _write_images(tmp_path, classes=(".a", ".b"))
        with pytest.raises(ValueError, match=r"at least 2 class subfolders.*\[\]"):
            data.load_directory(tmp_path)


def _not_an_image(path):
    path.write_text("hello")


def _empty(path):
    path.write_bytes(b"")


def _truncated(path):
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


class TestBrokenImages:
    @pytest.mark.parametrize("damage", [_not_an_image, _empty, _truncated])
    def test_names_the_broken_file(self, tmp_path, damage):
        root = _write_images(tmp_path)
        broken = root / "b" / "1.png"
        damage(broken)
        with pytest.raises(ValueError, match=re.escape(repr(str(broken)))):
            data.load_directory(root)

    def test_resized_loading_names_the_broken_file_too(self, tmp_path):
        root = _write_images(tmp_path)
        broken = root / "a" / "2.png"
        _truncated(broken)
        with pytest.raises(ValueError, match=re.escape(repr(str(broken)))):
            data.load_directory(root, image_size=4)

    def test_resize_matches_keras(self, tmp_path):
        import keras

        root = _write_images(tmp_path, per_class=2, size=(9, 7))
        loaded = data.load_directory(root, image_size=(4, 5))
        for index, path in enumerate(sorted(root.glob("*/*.png"))):
            pixels = np.asarray(Image.open(path), "float32")
            resized = keras.ops.convert_to_numpy(
                keras.ops.image.resize(pixels, (4, 5), interpolation="bilinear")
            )
            np.testing.assert_array_equal(
                loaded.x[index], np.round(np.clip(resized, 0, 255)).astype("uint8")
            )


def _truncated_npz(path):
    np.savez(path, x=np.zeros((4, 8, 8), "uint8"), y=[0, 1, 0, 1])
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def _garbage(path):
    path.write_bytes(b"definitely not a zip archive")


def _empty_file(path):
    path.write_bytes(b"")


def _plain_npy(path):
    with open(path, "wb") as file:
        np.save(file, np.zeros((4, 8, 8), "uint8"))


def _damaged_member(path):
    np.savez_compressed(path, x=np.arange(4096, dtype="uint8"), y=[0, 1])
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("y.npy", members["y.npy"])
        info = zipfile.ZipInfo("x.npy")
        # A stored member whose bytes stop short of its header's promise.
        archive.writestr(info, members["x.npy"][:100])


def _arrays(name, **arrays):
    def write(path):
        np.savez(path, **arrays)

    write.__name__ = name
    return write


class TestBrokenNpz:
    @pytest.mark.parametrize(
        "write, message",
        [
            (_truncated_npz, "cannot be read"),
            (_garbage, "cannot be read"),
            (_empty_file, "cannot be read"),
            (_plain_npy, "one array"),
            (_damaged_member, "cannot be read"),
            (_arrays("scalar_y", x=np.zeros((4, 8, 8)), y=np.array(3)), r"y.shape"),
            (_arrays("scalar_x", x=np.array(3.0), y=[0, 1]), r"x.shape=\(\)"),
            (_arrays("text_x", x=np.full((2, 4, 4), "a"), y=[0, 1]), "numbers"),
            (_arrays("complex_x", x=np.zeros((2, 4, 4), "c8"), y=[0, 1]), "numbers"),
            (_arrays("table_y", x=np.zeros((2, 4, 4)), y=np.zeros((2, 2))), "y.shape"),
        ],
    )
    def test_names_the_file_and_the_problem(self, tmp_path, write, message):
        path = tmp_path / "broken.npz"
        write(path)
        with pytest.raises(ValueError, match=re.escape(repr(str(path)))) as info:
            data.load_npz(path)
        assert re.search(message, str(info.value)), info.value
        # numpy's advice to turn pickle on would run code from the file.
        assert "allow_pickle" not in str(info.value)


class TestSources:
    def test_existing_folder_wins_over_a_built_in_name(self, tmp_path, monkeypatch):
        _write_images(tmp_path / "digits", classes=("cat", "dog"))
        monkeypatch.chdir(tmp_path)
        assert data.load("digits").class_names == ("cat", "dog")

    def test_existing_file_is_never_mistaken_for_a_built_in(
        self, tmp_path, monkeypatch
    ):
        (tmp_path / "translated-digits").write_text("my notes")
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ValueError, match="data='translated-digits'.*exists"):
            data.load("translated-digits")

    def test_built_in_name_without_such_path(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert data.load("digits").x.shape == (1797, 8, 8, 1)

    def test_folder_named_like_an_npz_file_is_a_folder(self, tmp_path):
        root = _write_images(tmp_path / "set.npz")
        assert data.load(root).class_names == ("a", "b")


class TestEnoughSamples:
    def test_two_per_class_is_enough_to_split(self):
        six = data.ImageDataset(
            np.zeros((6, 4, 4, 1), "uint8"), np.arange(6) % 3, tuple("abc")
        )
        assert data.check_enough_samples(six) is six
        train, test = data.stratified_split(six)
        np.testing.assert_array_equal(np.bincount(train.y), [1, 1, 1])
        np.testing.assert_array_equal(np.bincount(test.y), [1, 1, 1])
