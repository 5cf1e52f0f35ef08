"""Image folders as data sets: PNG/JPEG files in one folder per class.

Two layouts (`edgepack.data.load_data` tells them apart):
  given: ROOT/train/CLASS/*.png|jpg|jpeg and ROOT/test/CLASS/...: the split is the folders';
  split: ROOT/CLASS/...: each class's files are split by a seeded, stratified rule (TEST_FRACTION of
         each class, at least one image, to the test set), recorded in the data set's `split`.
Class names are the class folders' names sorted by code point (Python's `sorted`); label i is the i-th.
At least two classes, each with at least one training and one test image. Hidden entries (names
starting with ".") are skipped; any other file that is not .png/.jpg/.jpeg (any case) is refused, as is a
folder where an image is expected and a file where a class folder is expected: a stray file is usually
a mistake, so it is named rather than guessed about. Top-level files beside train/ and test/ (a README,
a licence) are ignored; other top-level folders are refused.

Pixels are read by the runtime's `read_image` (EXIF orientation, mode conversion, centre crop to the
input's aspect ratio, BILINEAR resize), so training sees images exactly as `edgepack predict` does.
Without an image size every image must already have the same size (after its EXIF orientation).
Channels: (N, H, W, 1) when every image is grayscale (modes 1, L, LA, I;16*, I; 16-bit keeps its high
byte), else (N, H, W, 3) with grayscale images replicated to three equal channels.

Memory: N images of H x W x C take N*H*W*C bytes as uint8 (1,800 images of 64x64x3: 22 MB); training
holds a float32 copy, 4x more. More than MAX_BYTES of pixels in all is refused before decoding.
The set's sha256 hashes the sorted relative paths and each file's bytes, so a rename or an edit
changes it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import DataError, EdgepackError
from edgepack.runtime.images import read_image

EXTENSIONS = (".png", ".jpg", ".jpeg")  # compared lower-cased
TEST_FRACTION = 0.2  # share of each class held out as the test set by the one-folder layout
MIN_CLASSES = 2
MAX_BYTES = 2**31  # uint8 pixels of train + test together (2 GiB; training's float32 copy takes 8 GiB)
SPLIT_FOLDERS = ("train", "test")


@dataclass(frozen=True)
class Listing:
    """The files of an image folder, before any is decoded."""

    root: Path  # the folder given
    class_names: tuple[str, ...]  # sorted class folder names
    train: tuple[tuple[Path, int], ...]  # (file, label), sorted by label then file name
    test: tuple[tuple[Path, int], ...]
    split: dict  # {"rule": "given"} or {"rule": "stratified", "test_fraction": f, "seed": s}
    sha256: str  # of the sorted relative paths and each file's bytes


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({e.strerror}): check its permissions") from None


def _images(class_dir: Path) -> list[Path]:
    """The image files of one class folder, sorted; one-line errors for anything else in it."""
    files = []
    for p in _visible(class_dir):
        if p.is_dir():
            raise DataError(f"{p}: a folder where an image file is expected: class folders hold "
                            "only .png/.jpg/.jpeg files, move it out")
        if not p.is_file():
            raise DataError(f"{p}: not a regular file (a broken link or link loop, a pipe or a device): "
                            "remove it")
        if p.suffix.lower() not in EXTENSIONS:
            raise DataError(f"{p}: not a .png, .jpg or .jpeg file: remove it from the image folder "
                            "(hidden files are skipped)")
        files.append(p)
    return files


def _classes(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for a folder of class folders."""
    classes = {}
    for p in _visible(folder):
        if p.is_symlink() and not p.exists():  # exists() is False for a link loop too
            raise DataError(f"{p}: a symbolic link that leads nowhere (broken, or a loop) where a class "
                            "folder is expected: remove it or point it at the real folder")
        if not p.is_dir():
            raise DataError(f"{p}: a file where a class folder is expected: {folder} must hold one "
                            "folder of images per class, move it out")
        classes[p.name] = _images(p)
    return classes


def _check_classes(classes: dict[str, list[Path]], where: Path, what: str) -> None:
    if len(classes) < MIN_CLASSES:
        found = f"only {next(iter(classes))!r}" if classes else "none"
        raise DataError(f"{where}: needs at least {MIN_CLASSES} class folders of {what}images, "
                        f"found {found}: add a folder per class")
    for name, files in classes.items():
        if not files:
            raise DataError(f"{where / name}: class {name!r} has no {what}images: add .png/.jpg files "
                            "or remove the folder")


def _given(root: Path) -> tuple[dict, dict]:
    """The train/ and test/ layout: the same classes in both, none empty."""
    for name in SPLIT_FOLDERS:
        if not (root / name).is_dir():
            other = next(n for n in SPLIT_FOLDERS if n != name)
            raise DataError(f"{root}: has {other}/ but no {name}/ folder: add {root / name}/CLASS/ folders, "
                            f"or put the class folders directly in {root} to split them by a seeded rule")
    for p in _visible(root):
        if p.is_dir() and p.name not in SPLIT_FOLDERS:
            raise DataError(f"{p}: unexpected folder beside train/ and test/: only those two are read, "
                            "move it out")
    train, test = _classes(root / "train"), _classes(root / "test")
    _check_classes(train, root / "train", "training ")
    for name in sorted(set(train) - set(test)):
        raise DataError(f"{root / 'test' / name}: class {name!r} has no test images: add the folder "
                        "with at least one image")
    for name in sorted(set(test) - set(train)):
        raise DataError(f"{root / 'train' / name}: class {name!r} has no training images: add the "
                        "folder with at least one image")
    _check_classes(test, root / "test", "test ")
    return train, test


def stratified_split(classes: dict[str, list[Path]], test_fraction: float, seed: int,
                     where: Path) -> tuple[dict, dict]:
    """Each class's files (sorted) shuffled by `seed`; round(n * test_fraction), at least 1 and at most
    n - 1, go to the test set. Classes are drawn in sorted order from one generator."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for name in sorted(classes):
        files = classes[name]
        if len(files) < 2:
            raise DataError(f"{where / name}: class {name!r} has {len(files)} image, at least 2 are "
                            "needed to split it into training and test images: add images")
        k = min(len(files) - 1, max(1, round(len(files) * test_fraction)))
        order = rng.permutation(len(files))
        test[name] = sorted(files[i] for i in order[:k])
        train[name] = sorted(files[i] for i in order[k:])
    return train, test


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}): check its permissions") from None
    return h.digest()


def list_sha256(root: Path, files: list[Path]) -> str:
    """sha256 of the sorted relative paths, each with its file's sha256."""
    h = hashlib.sha256()
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in files):
        h.update(rel.encode() + b"\0" + _file_sha256(path))
    return h.hexdigest()


def list_folder(path: str | os.PathLike, seed: int = 0, test_fraction: float = TEST_FRACTION) -> Listing:
    """List (and hash) an image folder of either layout; nothing is decoded yet."""
    root = Path(path)
    if any((root / n).exists() for n in SPLIT_FOLDERS):
        train, test = _given(root)
        split = {"rule": "given"}
    else:
        classes = _classes(root)
        _check_classes(classes, root, "")
        train, test = stratified_split(classes, test_fraction, seed, root)
        split = {"rule": "stratified", "test_fraction": test_fraction, "seed": seed}
    names = tuple(sorted(train))
    pairs = {part: tuple((f, i) for i, n in enumerate(names) for f in files[n])
             for part, files in (("train", train), ("test", test))}
    sha = list_sha256(root, [f for part in pairs.values() for f, _ in part])
    return Listing(root, names, pairs["train"], pairs["test"], split, sha)


def _read(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    try:
        return read_image(path, size, channels=None)
    except EdgepackError as e:  # the runtime's one-line InputFileError, naming the file
        raise DataError(str(e)) from None


def _check_bytes(n: int, shape: tuple[int, int], where: Path) -> None:
    total = n * shape[0] * shape[1] * 3  # the worst case: every image in colour
    if total > MAX_BYTES:
        raise DataError(f"{where}: {n} images of {shape[0]}x{shape[1]} take {total / 2**30:.1f} GiB, more "
                        f"than the {MAX_BYTES / 2**30:.0f} GiB edgepack loads: pass a smaller image size "
                        "or fewer images (--limit-train / --limit-test)")


def read_images(files: list[Path], image_size: tuple[int, int] | None, where: Path) -> np.ndarray:
    """Decode `files` into (N, H, W, C) uint8 (see the module docstring for sizes and channels)."""
    if image_size is not None:
        _check_bytes(len(files), image_size, where)
    arrays: list[np.ndarray] = []
    for f in files:
        a = _read(f, image_size)
        if arrays and a.shape[:2] != arrays[0].shape[:2]:
            (h0, w0), (h, w) = arrays[0].shape[:2], a.shape[:2]
            raise DataError(f"{files[0]} is {w0}x{h0} but {f} is {w}x{h} (width x height): images differ "
                            "in size, pass an image size (height, width) to resize them all")
        if not arrays and image_size is None:
            _check_bytes(len(files), a.shape[:2], where)
        arrays.append(a)
    if any(a.shape[2] == 3 for a in arrays):  # some colour: grey ones get three equal channels
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 1), np.uint8)
