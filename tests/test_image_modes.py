"""Pixels are read faithfully whatever the file's mode, and distortions by the resize are warned about."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlalign.cli import main
from vlalign.data.folder import ImageLoadWarning, load_image, load_image_folder
from vlalign.data.pixels import to_rgb


def test_a_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as handle:
        assert handle.mode == "I;16"
        assert (np.asarray(handle.convert("RGB")) == 255).mean() > 0.9  # what plain convert("RGB") did
    pixels = load_image(tmp_path / "deep.png", None, "test")
    expected = np.round(ramp.astype(np.float64) / 257).astype(np.uint8)
    assert pixels.shape == (64, 64, 3)
    assert np.array_equal(pixels[..., 0], expected) and np.array_equal(pixels[..., 2], expected)


def test_a_big_endian_16_bit_image_and_32_bit_integers():
    big = Image.new("I;16B", (2, 1))
    big.putpixel((0, 0), 65535)
    big.putpixel((1, 0), 257 * 100)
    assert np.asarray(to_rgb(big))[0, :, 1].tolist() == [255, 100]
    wide = Image.fromarray(np.array([[-5, 0, 70000, 257 * 7]], dtype=np.int32))
    assert wide.mode == "I"
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 0, 255, 7]  # the 16-bit scale, clipped


def test_float_images_in_unit_and_byte_ranges():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
    byte = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32))
    assert np.asarray(to_rgb(byte))[0, :, 0].tolist() == [0, 100, 255]
    with pytest.raises(ValueError, match="NaN"):
        to_rgb(Image.fromarray(np.array([[np.nan]], dtype=np.float32)))


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (1, 1), (0, 0, 0, 0))  # fully transparent black: convert("RGB") shows black
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("LA", (1, 1), (0, 128))
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [127] * 3
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette))[0].tolist() == [[255, 255, 255], [200, 100, 0]]


def test_cmyk_and_exif_orientation(tmp_path):
    cmyk = Image.new("CMYK", (1, 1), (255, 0, 0, 0))
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [0, 255, 255]  # full cyan
    # A phone photo stored landscape with "rotate 90°" in its EXIF is shown (and must be read) portrait.
    landscape = Image.new("RGB", (40, 20), (0, 0, 255))
    landscape.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    landscape.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    pixels = load_image(tmp_path / "phone.jpg", None, "test")
    assert pixels.shape == (40, 20, 3)
    assert pixels[5, 10, 0] > 200 and pixels[35, 10, 2] > 200  # red on top after the rotation


def write_folder(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (200, 30, 30)).save(folder / f"images/{i}.png")
        lines.append(json.dumps({"file_name": f"images/{i}.png", "label": "star"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_strips_and_dots_are_warned_about_and_counted(tmp_path):
    folder = write_folder(tmp_path / "odd", [(7, 300), (1, 1), (64, 64), (80, 60)])
    with pytest.warns(ImageLoadWarning) as record:
        loaded = load_image_folder(folder, image_size=64)
    messages = [str(w.message) for w in record]
    assert any("1 of 4 images have an aspect ratio beyond 3:1, so the centre crop to 64x64 keeps less than 33% "
               "of the image (e.g. 0.png (7x300))" in m for m in messages), messages
    assert any("2 of 4 images have a shorter side more than 4x below 64x64" in m and "1.png (1x1)" in m
               for m in messages), messages
    assert loaded.load_warnings == {"extreme_aspect_ratio": 1, "upscaled": 2, "huge": 0}


def test_eval_reports_the_counts_in_metrics_and_one_warning_line_each(tmp_path, capsys):
    folder = write_folder(tmp_path / "odd", [(7, 300), (64, 64)])
    assert main(["eval", "--data", str(folder), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    warning_lines = [line for line in err.splitlines() if line.startswith("vlalign eval: warning:")]
    assert len(warning_lines) == 2 and "aspect ratio" in err and "shorter side" in err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["image_load_warnings"] == {"extreme_aspect_ratio": 1, "upscaled": 1, "huge": 0}


def test_undecodable_modes_are_one_line_errors(tmp_path):
    from vlalign.data.folder import DatasetError

    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot decode image"):
        load_image(tmp_path / "bad.png", 8, "where")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
        assert load_image(tmp_path / "ok.png", 8, "where").shape == (8, 8, 3)
