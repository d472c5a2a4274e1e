"""Tests for the `explain` subcommand's logic: `kgp.viz.explain`."""

import argparse

import keras
import numpy as np
import pytest
from viz_models import cpu_safe_conv2d

import keras_globalpool as kgp
from keras_globalpool.cli.explain_command import add_explain_parser
from keras_globalpool.cli.main import main
from keras_globalpool.viz import explain as explain_module
from keras_globalpool.viz.explain import explain

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def save_model(path, pooling, data_format="channels_last"):
    shape = (8, 8, 3) if data_format == "channels_last" else (3, 8, 8)
    inputs = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = cpu_safe_conv2d(x, 4, data_format)
    x = pooling(data_format=data_format, name="pooler")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(path)
    return model


def save_images(directory, names, size=8):
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        path = directory / name
        keras.utils.save_img(
            path, rng.integers(0, 256, (size, size, 3)).astype("uint8")
        )
        paths.append(path)
    return paths


@pytest.fixture
def captured(monkeypatch):
    """The arguments `explain` passes to `save_overlay`, instead of drawing."""
    calls = []

    def fake_save_overlay(image, heatmap, path, title=None, data_format=None):
        calls.append({"image": image, "heatmap": heatmap, "path": path, "title": title})
        return path

    monkeypatch.setattr(explain_module, "save_overlay", fake_save_overlay)
    return calls


def test_writes_one_png_per_image(tmp_path):
    keras.utils.set_random_seed(0)
    save_model(tmp_path / "m.keras", kgp.GlobalAveragePooling)
    images = save_images(tmp_path, ["a.png", "b.png"])

    written = explain(tmp_path / "m.keras", images, tmp_path / "out")

    assert written == [tmp_path / "out" / "a_cam.png", tmp_path / "out" / "b_cam.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_overlays_hold_the_cam_of_the_predicted_class(tmp_path, captured, data_format):
    keras.utils.set_random_seed(1)
    model = save_model(tmp_path / "m.keras", kgp.GlobalAveragePooling, data_format)
    (image_path,) = save_images(tmp_path, ["big.png"], size=12)

    explain(tmp_path / "m.keras", [image_path], tmp_path / "out")

    (call,) = captured
    pixels = keras.utils.img_to_array(
        keras.utils.load_img(image_path, target_size=(8, 8)), data_format=data_format
    )
    np.testing.assert_array_equal(call["image"], pixels)
    predicted = int(np.argmax(model.predict(pixels[None], verbose=0)))
    expected = kgp.class_activation_maps(model, pixels[None])[0]
    np.testing.assert_allclose(call["heatmap"], expected, atol=1e-6)
    assert call["title"].startswith(f"big.png: class {predicted} (")
    assert call["title"].endswith(", CAM")


def test_attention_model_also_gets_its_attention_map(tmp_path, captured):
    keras.utils.set_random_seed(2)
    model = save_model(tmp_path / "m.keras", kgp.GlobalAttentionPooling)
    (image_path,) = save_images(tmp_path, ["x.png"])

    written = explain(
        tmp_path / "m.keras", [image_path], tmp_path / "out", class_index=1
    )

    assert [path.name for path in written] == ["x_gradcam.png", "x_attention.png"]
    pixels = keras.utils.img_to_array(keras.utils.load_img(image_path))[None]
    np.testing.assert_allclose(
        captured[0]["heatmap"],
        kgp.class_activation_maps(model, pixels, 1)[0],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        captured[1]["heatmap"],
        kgp.attention_maps(model, pixels, normalize=True)[0],
        atol=1e-6,
    )
    assert "class 1" in captured[0]["title"]


def test_repeated_file_names_do_not_overwrite(tmp_path, captured):
    save_model(tmp_path / "m.keras", kgp.GlobalMaxPooling)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    images = save_images(tmp_path / "one", ["s.png"]) + save_images(
        tmp_path / "two", ["s.png"]
    )

    written = explain(tmp_path / "m.keras", images, tmp_path / "out")

    assert [path.name for path in written] == ["s_gradcam.png", "s-1_gradcam.png"]


def test_subcommand_parses_and_runs(tmp_path, capsys):
    save_model(tmp_path / "m.keras", kgp.GlobalAveragePooling)
    (image_path,) = save_images(tmp_path, ["p.png"])
    parser = argparse.ArgumentParser(prog="keras-globalpool")
    add_explain_parser(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(
        [
            "explain",
            str(tmp_path / "m.keras"),
            str(image_path),
            "--out",
            str(tmp_path / "o"),
            "--method",
            "gradcam",
            "--class-index",
            "2",
        ]
    )
    status = args.func(args)

    assert status == 0
    assert args.class_index == 2
    assert capsys.readouterr().out.strip() == str(tmp_path / "o" / "p_gradcam.png")
    assert (tmp_path / "o" / "p_gradcam.png").read_bytes()[:8] == PNG_SIGNATURE


def test_keras_globalpool_explain_command(tmp_path, capsys):
    save_model(tmp_path / "m.keras", kgp.GlobalAveragePooling)
    (image_path,) = save_images(tmp_path, ["q.png"])
    argv = ["explain", str(tmp_path / "m.keras"), str(image_path)]
    status = main([*argv, "--out", str(tmp_path / "o")])
    assert status == 0
    assert (tmp_path / "o" / "q_cam.png").read_bytes()[:8] == PNG_SIGNATURE


def test_subcommand_rejects_an_unknown_method(capsys):
    parser = argparse.ArgumentParser(prog="keras-globalpool")
    add_explain_parser(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["explain", "m.keras", "a.png", "--out", "o", "--method", "x"]
        )
    assert "invalid choice: 'x'" in capsys.readouterr().err


def test_native_channels_first_model_explains_or_says_why_not(tmp_path, capsys):
    """TensorFlow's CPU runs a channels_first `Conv2D` only with oneDNN."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((3, 8, 8))
    x = keras.layers.Conv2D(4, 3, data_format="channels_first")(inputs)
    x = kgp.GlobalAveragePooling(data_format="channels_first", name="pooler")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(tmp_path / "m.keras")
    (image_path,) = save_images(tmp_path, ["c.png"])
    pixels = keras.utils.img_to_array(
        keras.utils.load_img(image_path), data_format="channels_first"
    )
    try:
        model.predict(pixels[None], verbose=0)
        runs_here = True
    except Exception as error:  # TensorFlow's UnimplementedError on this CPU.
        assert "NHWC" in str(error), error
        runs_here = False

    code = main(
        [
            "explain",
            str(tmp_path / "m.keras"),
            str(image_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )

    err = capsys.readouterr().err
    if runs_here:
        assert code == 0, err
        assert (tmp_path / "out" / "c_cam.png").read_bytes()[:8] == PNG_SIGNATURE
    else:
        assert code == 2
        assert err.count("\n") == 1, err
        assert "uses channels_first convolutions" in err
