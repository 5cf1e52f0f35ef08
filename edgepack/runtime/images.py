"""Image files for `edgepack predict`: PNG/JPEG (Pillow, the `images` extra) and .npy arrays.

How a PNG/JPEG becomes the model's 32x32 input (fixed, so results are reproducible):
  0. an image of more than MAX_PIXELS pixels is refused from its header, before it is decoded;
  1. EXIF orientation is applied (photos from phones), then the image is converted to 8-bit RGB
     (grayscale is replicated, palette images expanded, an alpha channel is dropped, 16-bit values
     keep their high byte, as Pillow reads 16-bit RGB; modes with no fixed 8-bit form are refused);
  2. the largest centred box of the input's aspect ratio is cropped (a square for a square input:
     the shorter side is kept whole);
  3. the box is resized to the input's size (32x32 here) with Pillow's BILINEAR filter, which
     antialiases when it shrinks. An image that already has the input's size is used pixel for pixel.
Channels: 3 (RGB) by default; `channels=1` gives 8-bit grey (H, W, 1) (colour by Pillow's ITU-R 601-2
luma) for one-channel models; `channels=None` keeps each file's kind: grey modes (1, L, LA, I;16*, I)
one channel, others three. Image folders for training (edgepack.imagefolder) are read with None.
A .npy file holds uint8 pixels (32, 32, 3) or (N, 32, 32, 3), or floats already scaled to [0, 1];
it is read with allow_pickle=False (a pickled object array is refused, never executed).
The file kind is recognised by its first bytes, not by its name.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.runtime import load
from edgepack.runtime.classifier import InputError

IMAGE_SIZE = (32, 32)  # (height, width) images are read at before the model loads (CIFAR-10's size)
MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"\x93NUMPY": "npy"}
# 50 megapixels: a full-resolution photo of a 48/50 MP phone sensor (8160x6120) still reads. Decoding
# costs ~9 bytes a pixel at peak (12000x12000 took 1.3 GB), so ~0.45 GB here; larger images, which a
# 32x32 classifier gains nothing from, are refused from their header (below Pillow's own 89 MP warning).
MAX_PIXELS = 50_000_000
# Pillow modes whose convert("RGB") gives the right 8-bit RGB (alpha dropped, palettes expanded,
# CMYK/YCbCr/LAB/HSV by Pillow's formulas). 16-bit grey (I;16*, and I from Pillow < 10.4) keeps the
# high byte of each value, as Pillow reads 16-bit RGB and grey+alpha PNGs. Other modes are refused.
RGB_CONVERTIBLE = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
GRAY_MODES = ("1", "L", "LA", *SIXTEEN_BIT)  # grayscale files: one channel with channels=None


class InputFileError(InputError):
    """An input file is missing, unreadable or not a PNG, JPEG or .npy image array."""


def file_kind(path: Path) -> str:
    """"png", "jpeg" or "npy" from the file's first bytes; one-line errors otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise InputFileError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a folder, expected a PNG, JPEG or .npy file") from None
    except OSError as e:
        raise InputFileError(f"{path}: cannot be read ({e.strerror})") from None
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    raise InputFileError(f"{path}: not a PNG, JPEG or .npy file")


def to_rgb(img, where: str | os.PathLike, channels: int | None = 3):
    """A Pillow image as an 8-bit RGB image (see RGB_CONVERTIBLE, SIXTEEN_BIT); one-line error otherwise.

    channels: 1 gives 8-bit grey (mode L) instead; None gives grey for grayscale modes (GRAY_MODES).
    """
    from PIL import Image

    grey = channels == 1 or (channels is None and img.mode in GRAY_MODES)
    if img.mode in RGB_CONVERTIBLE:
        if grey and img.mode not in GRAY_MODES:  # colour to luma through RGB: one formula for every mode
            return img.convert("RGB").convert("L")
        return img.convert("L" if grey else "RGB")
    fix = "save it as an 8-bit (or 16-bit PNG) RGB or grayscale image"
    if img.mode not in SIXTEEN_BIT:
        raise InputFileError(f"{where}: image mode {img.mode} has no fixed 8-bit RGB form: {fix}")
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise InputFileError(f"{where}: 32-bit pixel values outside 0..65535 (mode {img.mode}): {fix}")
    high = Image.fromarray((values >> 8).astype(np.uint8), "L")
    return high if grey else high.convert("RGB")


def _too_large(path: Path, size: tuple[int, int] | None) -> InputFileError:
    what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return InputFileError(f"{path}: {what}, more than the {MAX_PIXELS:,} edgepack reads: downscale it first")


def crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred (left, top, right, bottom) box of `size`'s (height, width) aspect ratio."""
    if width * size[0] > height * size[1]:  # wider than the target: keep the whole height
        w, h = max(1, height * size[1] // size[0]), height
    else:
        w, h = width, max(1, width * size[0] // size[1])
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = (32, 32),
               channels: int | None = 3) -> np.ndarray:
    """A PNG/JPEG file as uint8 RGB pixels (height, width, 3), cropped and resized as documented above.

    size: (height, width), or None for the image as stored (after its EXIF orientation), uncropped.
    channels: 3 (RGB), 1 (grey: (height, width, 1)) or None (1 for a grayscale file, else 3).
    """
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise EdgepackError("reading PNG/JPEG files needs Pillow: pip install 'edgepack[images]'") from None
    path = Path(path)
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 MP; MAX_PIXELS refuses those anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as img:
            if img.width * img.height > MAX_PIXELS:  # from the header: nothing is decoded yet
                raise _too_large(path, img.size)
            img = to_rgb(ImageOps.exif_transpose(img), path, channels)
            if size is not None:
                img = img.crop(crop_box(*img.size, size))  # nothing outside it leaks in
                if img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
            return (pixels[..., None] if pixels.ndim == 2 else pixels).copy()
    except InputFileError:
        raise
    except Image.DecompressionBombError:  # over 2x Pillow's limit: refused inside Image.open
        raise _too_large(path, None) from None
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for broken or truncated files
        raise InputFileError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """A .npy array, without pickle (shape and dtype are checked later by predict())."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputFileError(f"{path}: not a readable .npy image array ({str(e).splitlines()[0]})") from None


def read_input(path: str | os.PathLike, size: tuple[int, int] = (32, 32), channels: int = 3) -> np.ndarray:
    """One input file: an image (H, W, channels) or an array of images (N, H, W, C) / (H, W, C)."""
    path = Path(path)
    return read_npy(path) if file_kind(path) == "npy" else read_image(path, size, channels=channels)


def predict_files(model: str | os.PathLike, inputs: list[str | os.PathLike], top_k: int = 1,
                  threads: int | None = None) -> dict:
    """Classify image files with an exported model; returns a JSON-ready record.

    Every input is read before the model runs, so a bad file fails the call with one line naming it.
    An .npy file of N images gives N predictions named `file.npy[i]`.
    """
    if not inputs:
        raise InputError("no input files given: pass PNG, JPEG or .npy files")
    paths = [Path(p) for p in inputs]
    arrays = [read_input(p, IMAGE_SIZE) for p in paths]  # bad files fail before the model loads
    clf = load(model, threads=threads)
    if clf.input_shape != (*IMAGE_SIZE, 3):  # read again at the model's size and channels (1: grey)
        arrays = [read_input(p, clf.input_shape[:2], clf.input_shape[2]) for p in paths]
    if not 1 <= top_k <= clf.num_classes:
        raise InputError(f"--top-k must be from 1 to {clf.num_classes}, got {top_k}")
    predictions = []
    for path, array in zip(paths, arrays, strict=True):
        try:
            results = clf.classify(array, top_k=top_k)
        except InputError as e:
            raise InputFileError(f"{path}: {e}") from None
        single = array.ndim == len(clf.input_shape)
        for i, top in enumerate(results):
            name = str(path) if single else f"{path}[{i}]"
            predictions.append({"input": name, "top": [
                {"label": p.label, "class_id": p.class_id, "score": p.score} for p in top]})
    return {"model": str(model), "format": clf.format, "runtime": clf.runtime, "top_k": top_k,
            "predictions": predictions}
