"""Reading PNG/JPEG files for `edgepack predict`: every Pillow mode read right or refused, a pixel limit."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgepack.cli import main
from edgepack.runtime import images
from edgepack.runtime.images import InputFileError, read_image

VALUES_16 = np.array([0, 255, 256, 1000, 30000, 65280, 65535, 40000], np.uint16)  # -> high byte
EXPECTED_8 = VALUES_16 >> 8  # [0, 0, 1, 3, 117, 255, 255, 156]: what Pillow reads from 16-bit RGB PNGs


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, row: bytes) -> bytes:
    """A PNG written by hand (every row the same), for kinds Pillow does not write: 16-bit grey+alpha,
    16-bit RGB, or a huge image that is small on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    compressor = zlib.compressobj()
    idat = b"".join(compressor.compress(b"\0" + row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


@pytest.mark.parametrize("color_type, channels", [(0, 1), (4, 2), (2, 3), (6, 4)],
                         ids=["grey16", "grey-alpha16", "rgb16", "rgba16"])
def test_16_bit_pngs_scale_to_8_bits(tmp_path, color_type, channels):
    """A 32x32 16-bit PNG (used pixel for pixel) gives each value's high byte, grey or colour alike."""
    row = np.repeat(np.tile(VALUES_16, 4)[:, None], channels, axis=1).astype(">u2").tobytes()
    x = read_image(_file(tmp_path, "a.png", png_bytes(32, 32, 16, color_type, row)))
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[5, :8, 0], EXPECTED_8)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey replicated, or the same in each channel


def _palette(mode: str) -> Image.Image:
    img = Image.new(mode, (1, 1))
    img.putpalette([10, 20, 30] + [0] * 765)
    return img


def _transparent_palette() -> Image.Image:
    img = _palette("P")
    img.info["transparency"] = 0
    return img


# Every mode Pillow has: an image whose pixel (0, 0) is known, and the 8-bit RGB it must give.
MODES = {
    "1": (lambda: Image.new("1", (1, 1), 1), (255, 255, 255)),
    "L": (lambda: Image.new("L", (1, 1), 77), (77, 77, 77)),
    "LA": (lambda: Image.new("LA", (1, 1), (77, 0)), (77, 77, 77)),  # alpha dropped
    "P": (lambda: _palette("P"), (10, 20, 30)),
    "P transparent": (_transparent_palette, (10, 20, 30)),  # the colour under the transparency
    "PA": (lambda: _palette("PA"), (10, 20, 30)),
    "RGB": (lambda: Image.new("RGB", (1, 1), (1, 2, 3)), (1, 2, 3)),
    "RGBA": (lambda: Image.new("RGBA", (1, 1), (1, 2, 3, 0)), (1, 2, 3)),
    "RGBX": (lambda: Image.new("RGBX", (1, 1), (1, 2, 3, 0)), (1, 2, 3)),
    "RGBa": (lambda: Image.new("RGBa", (1, 1), (50, 50, 50, 128)), (99, 99, 99)),  # un-premultiplied
    "CMYK": (lambda: Image.new("CMYK", (1, 1), (255, 0, 0, 0)), (0, 255, 255)),  # cyan
    "YCbCr": (lambda: Image.new("YCbCr", (1, 1), (128, 128, 128)), (128, 128, 128)),
    "LAB": (lambda: Image.new("LAB", (1, 1), (255, 128, 128)), (254, 255, 254)),  # white
    "HSV": (lambda: Image.new("HSV", (1, 1), (0, 255, 255)), (255, 0, 0)),  # red
    "I;16": (lambda: Image.fromarray(VALUES_16[None]), None),
    "I;16B": (lambda: Image.frombytes("I;16B", (8, 1), VALUES_16.astype(">u2").tobytes()), None),
    "I;16L": (lambda: Image.frombytes("I;16L", (8, 1), VALUES_16.astype("<u2").tobytes()), None),
    "I": (lambda: Image.fromarray(VALUES_16[None].astype(np.int32), "I"), None),  # old Pillow's 16-bit grey
}


@pytest.mark.parametrize("name", MODES)
def test_every_mode_gives_the_right_8_bit_rgb(name):
    make, expected = MODES[name]
    img = make()
    assert img.mode == name.split()[0]
    rgb = np.asarray(images.to_rgb(img, "x.png"))
    assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3
    if expected is None:  # 16-bit grey: the high byte of each value
        np.testing.assert_array_equal(rgb[0, :, 1], EXPECTED_8)
    else:
        assert tuple(rgb[0, 0]) == expected


@pytest.mark.parametrize("make, message", [
    (lambda: Image.new("F", (1, 1), 0.5), "mode F"),
    (lambda: Image.new("La", (1, 1)), "mode La"),
    (lambda: Image.fromarray(np.array([[70000, -1]], np.int32), "I"), "outside 0..65535"),
])
def test_modes_without_a_known_8_bit_form_are_refused(make, message):
    with pytest.raises(InputFileError, match=f"^x.png: .*{message}.*: save it as") as e:
        images.to_rgb(make(), "x.png")
    assert "\n" not in str(e.value)


def test_pixel_limit_is_inclusive(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 40 * 30)
    assert read_image(path).shape == (32, 32, 3)
    monkeypatch.setattr(images, "MAX_PIXELS", 40 * 30 - 1)
    with pytest.raises(InputFileError, match=r"a\.png: 40x30 = 1,200 pixels, more than the 1,199"):
        read_image(path)


def test_huge_image_is_refused_in_one_line_before_decoding(tmp_path, capsys):
    """12000x12000 (144 MP, 18 KB on disk as a 1-bit PNG): over the limit and over Pillow's warning
    threshold; refused from its header, with no DecompressionBombWarning."""
    big = _file(tmp_path, "big.png", png_bytes(12000, 12000, 1, 0, bytes(1500)))
    assert big.stat().st_size < 100_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["predict", str(tmp_path / "model.onnx"), str(big)])  # images are read before the model
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and not caught, [str(w.message) for w in caught]
    assert err == (f"edgepack: error: {big}: 12000x12000 = 144,000,000 pixels, more than the "
                   f"{images.MAX_PIXELS:,} edgepack reads: downscale it first\n")
