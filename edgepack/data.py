"""Data sets for training and evaluation: CIFAR-10 (the default demo) or an image folder, loaded safely.

`load_data(path)` reads either. An image folder (train/CLASS/*.png|jpg and test/CLASS/..., or one folder
of class folders split by a seeded, stratified rule) is read by edgepack.imagefolder, whose docstring
gives its rules (class order, channels, sizes, memory, hash). Everything else here is CIFAR-10.

CIFAR-10 sources, in order: an explicit path (`--data`), `$EDGEPACK_DATA`, the Keras cache
(`~/.keras/datasets/cifar-10-batches-py`), else the official archive is downloaded and checked
against its published md5. A path may be a `cifar-10-python.tar.gz` or an extracted
`cifar-10-batches-py` folder; a file the user points at is never required to match the official
checksum (copies rebuilt losslessly have other bytes).

The batches are pickles from users' disks (the official archive uses protocol 2; re-pickled copies may
use 3 to 5): they are read with an unpickler that allows only the numpy array reconstruction the format
needs, and tar members are read into memory, never extracted.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from edgepack import imagefolder
from edgepack.errors import DataError
from edgepack.rundir import sha256_file
from edgepack.runtime.preprocess import scale_pixels

ENV_VAR = "EDGEPACK_DATA"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)  # CIFAR-10's (height, width, channels); other sets carry their own
NUM_CLASSES = 10  # CIFAR-10's
MIN_CLASSES = imagefolder.MIN_CLASSES  # what any data set has at least
GIVEN = {"rule": "given"}  # the split of a set that comes as training and test files
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"  # published next to the official archive
KERAS_CACHE = Path.home() / ".keras" / "datasets"
MAX_MEMBER_BYTES = 64 << 20  # a real batch is ~31 MB; refuse anything far larger (decompression bombs)
EXPECTED = ("expected a cifar-10-python.tar.gz file or a cifar-10-batches-py folder (or an image folder: "
            "train/CLASS/*.png, test/CLASS/...)")
# Compression by the file's first bytes, so a bad file gets one reason, not one per method tarfile tries.
TAR_MODES = {b"\x1f\x8b": "r:gz", b"BZh": "r:bz2", b"\xfd7zXZ\x00": "r:xz"}  # anything else: plain tar


@dataclass(frozen=True)
class Dataset:
    """A data set as uint8 NHWC images and int64 labels."""

    x_train: np.ndarray  # (N, H, W, C) uint8; C is 1 (all grayscale) or 3
    y_train: np.ndarray  # (N,) int64 in 0..len(class_names) - 1
    x_test: np.ndarray  # (M, H, W, C) uint8
    y_test: np.ndarray  # (M,) int64
    class_names: tuple[str, ...]  # CIFAR-10: batches.meta's 10 names; a folder: sorted class folder names
    source: str  # the path it was read from
    sha256: str  # archive file; CIFAR batch files; or an image folder's sorted file list and file bytes
    input_shape: tuple[int, int, int] | None = None  # (H, W, C) of one image; None: x_train's
    split: dict = field(default_factory=lambda: dict(GIVEN))  # how train/test were formed

    def __post_init__(self):
        if self.input_shape is None:  # frozen: set once, here
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.x_train.shape[1:]))


# --- where the data comes from

def resolve_data_path(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Pick the data source: explicit path, $EDGEPACK_DATA, Keras cache, else download."""
    for candidate, origin in ((path, "--data"), (os.environ.get(ENV_VAR), f"${ENV_VAR}")):
        if candidate:
            p = Path(candidate).expanduser()
            if not p.exists() and p.is_symlink():  # exists() is False for a link loop too
                raise DataError(f"{p} (from {origin}) is a symbolic link that leads nowhere (broken, or a "
                                "loop): point it at the real file or folder")
            if not p.exists():
                raise DataError(f"data not found at {p} (from {origin}): point it at a cifar-10-python."
                                "tar.gz, an extracted cifar-10-batches-py folder or an image folder")
            if not p.is_file() and not p.is_dir():  # /dev/null, /dev/stdin, a pipe: nothing to read twice
                raise DataError(f"{p} (from {origin}) is not a regular file or folder: {EXPECTED}")
            return Path(os.path.abspath(p))  # recorded as data_source: found again from any folder
    cached = KERAS_CACHE / FOLDER
    if (cached / META).is_file():
        return cached
    archive = KERAS_CACHE / "cifar-10-python.tar.gz"
    if archive.is_file():
        return archive
    if not download:
        raise DataError("no CIFAR-10 copy found: pass --data PATH or set EDGEPACK_DATA to a "
                        "cifar-10-python.tar.gz or cifar-10-batches-py folder")
    return download_official(archive)


def download_official(target: Path) -> Path:
    """Download the official archive to `target`, verifying the published md5."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(OFFICIAL_URL, timeout=30) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                md5.update(block)
                f.write(block)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"no local CIFAR-10 copy and the download failed ({e}): pass --data PATH or set "
                        "EDGEPACK_DATA to a local cifar-10-python.tar.gz") from None
    if md5.hexdigest() != OFFICIAL_MD5:
        tmp.unlink(missing_ok=True)
        raise DataError(f"downloaded CIFAR-10 archive has md5 {md5.hexdigest()}, expected {OFFICIAL_MD5}: "
                        "retry, or pass --data PATH to a local copy")
    os.replace(tmp, target)
    return target


# --- safe reading

def _array_from_buffer(buf, dtype, shape, order, axis_order=None) -> np.ndarray:
    """What numpy's pickle protocol 5 calls to rebuild an array from its raw bytes (numpy's own
    `_frombuffer`), for plain numeric dtypes only: an object array would be pointers read from the file."""
    if not isinstance(buf, bytes | bytearray) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"refused a protocol-5 array of {type(buf).__name__} with dtype {dtype}")
    array = np.frombuffer(buf, dtype=dtype)
    if order == "K" and axis_order is not None:  # a non-contiguous array: C order, then its axis order
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order=order)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: numpy array reconstruction and plain containers only.

    Protocols 2-4 rebuild arrays with `_reconstruct` + `ndarray.__setstate__`; protocol 5 (numpy >= 1.16)
    stores the raw bytes in-band as a bytearray and calls `_frombuffer`, here `_array_from_buffer`.
    Out-of-band buffers are refused by pickle itself (no `buffers` are passed).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        # Python 3 writes bytes in protocol 2 as _codecs.encode(text, "latin1"): data, not code.
        ("_codecs", "encode"): ("_codecs", "encode"),
    }
    _PROTOCOL_5 = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._PROTOCOL_5:
            return _array_from_buffer
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        try:
            return super().find_class(*target)
        except (ImportError, AttributeError):  # numpy 1.x has no numpy._core
            return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{where}: not a CIFAR-10 batch, unsafe or corrupt pickle ({e})") from None
    except Exception as e:  # truncated or garbled streams raise many types
        raise DataError(f"{where}: corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict, found {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_members(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Read the named batch files from a tar archive (into memory) or an extracted folder."""
    found: dict[str, bytes] = {}
    if path.is_dir():
        folder = path / FOLDER if (path / FOLDER).is_dir() else path
        for n in names:
            f = folder / n
            if f.is_file():
                if f.stat().st_size > MAX_MEMBER_BYTES:
                    raise DataError(f"{f}: {f.stat().st_size} bytes is too large for a CIFAR-10 batch")
                found[n] = f.read_bytes()
        return found
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        mode = next((m for magic, m in TAR_MODES.items() if head.startswith(magic)), "r:")
        with tarfile.open(path, mode) as tar:
            for m in tar:
                p = PurePosixPath(m.name)
                # Only regular files named like a batch, inside the canonical folder or at the top.
                if not m.isfile() or p.is_absolute() or ".." in p.parts or p.name not in names:
                    continue
                if p.parent.name not in ("", FOLDER) or len(p.parts) > 2:
                    continue
                if m.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{path}: member {m.name} is {m.size} bytes, too large for a batch")
                fobj = tar.extractfile(m)
                found[p.name] = fobj.read() if fobj else b""
                if len(found[p.name]) != m.size:
                    raise DataError(f"{path}: member {m.name} is truncated")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: cannot read as a tar archive ({reason}): {EXPECTED}; if it is one, it is "
                        "truncated or corrupt, re-copy it") from None
    return found


def _images_and_labels(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{where}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
    if not isinstance(labels, list | np.ndarray) or len(labels) != data.shape[0]:
        n = len(labels) if hasattr(labels, "__len__") else "no"
        raise DataError(f"{where}: {n} labels for {data.shape[0]} images")
    y = np.asarray(labels)
    if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= NUM_CLASSES)):
        raise DataError(f"{where}: labels must be integers in 0..9")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-planar rows -> NHWC
    return np.ascontiguousarray(x), y.astype(np.int64)


def _class_names(meta: dict, where: str) -> tuple[str, ...]:
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{where}: expected 10 label_names, found {names!r:.80}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def dataset_sha256(path: Path) -> str:
    """sha256 of the archive file; for a folder, of its batch files' hashes in a fixed order."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    folder = path / FOLDER if (path / FOLDER).is_dir() else path
    for n in (META, *TRAIN_BATCHES, TEST_BATCH):
        h.update(n.encode() + b"\0" + hashlib.sha256((folder / n).read_bytes()).digest())
    return h.hexdigest()


def test_set_sha256(ds: Dataset) -> str:
    """sha256 of the exact test images and labels (identifies a test subset, whatever made it)."""
    h = hashlib.sha256(np.ascontiguousarray(ds.x_test).tobytes())
    h.update(np.ascontiguousarray(ds.y_test, dtype=np.int64).tobytes())
    return h.hexdigest()


def load_data(path: str | os.PathLike | None = None, limit_train: int | None = None,
              limit_test: int | None = None, seed: int = 0, image_size: tuple[int, int] | None = None,
              download: bool = True) -> Dataset:
    """Load, validate and optionally subset a data set: CIFAR-10 or an image folder.

    path: a CIFAR-10 archive or folder, or an image folder (None: CIFAR-10 from the usual places).
    limit_train / limit_test: seeded, class-balanced subsets (of an image folder, only those are decoded).
    seed: the subsets' and the one-folder split's seed.
    image_size: (height, width) image-folder images are resized to (None: their common size).
    """
    src = resolve_data_path(path, download=download)
    size = _check_image_size(image_size)
    if src.is_dir() and not _is_cifar_folder(src):
        return _load_folder(src, limit_train, limit_test, seed, size)
    if size is not None and size != IMAGE_SHAPE[:2]:
        raise DataError(f"{src}: CIFAR-10 images are 32x32, an image size of {size[0]}x{size[1]} applies "
                        "to image folders only: leave it out")
    check_limits(num_classes=NUM_CLASSES, limit_train=limit_train, limit_test=limit_test)
    return _load_cifar(src, limit_train, limit_test, seed)


def _check_image_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    ok = isinstance(size, tuple | list) and len(size) == 2
    if not ok or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in size):
        raise DataError(f"image size must be two positive integers (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _is_cifar_folder(path: Path) -> bool:
    """A cifar-10-batches-py folder (or its parent), complete or not, so a missing batch is named."""
    return (path / FOLDER).is_dir() or any((path / n).is_file() for n in (META, *TRAIN_BATCHES, TEST_BATCH))


def _subset(pairs: tuple, limit: int | None, seed: int) -> list:
    if limit is None:
        return list(pairs)
    return [pairs[i] for i in balanced_subset(np.array([label for _, label in pairs]), limit, seed)]


def _load_folder(src: Path, limit_train, limit_test, seed: int, size) -> Dataset:
    """An image folder: listed and hashed whole, then only the (subset) images used are decoded."""
    listing = imagefolder.list_folder(src, seed)
    check_limits(num_classes=len(listing.class_names), limit_train=limit_train, limit_test=limit_test)
    train, test = _subset(listing.train, limit_train, seed), _subset(listing.test, limit_test, seed)
    # Decoded together: one size and one channel count for both parts.
    x = imagefolder.read_images([f for f, _ in train + test], size, src)
    y = np.array([label for _, label in train + test], np.int64)
    n = len(train)
    return Dataset(x[:n], y[:n], x[n:], y[n:], listing.class_names, str(src), listing.sha256,
                   tuple(int(d) for d in x.shape[1:]), listing.split)


def _load_cifar(src: Path, limit_train, limit_test, seed: int) -> Dataset:
    names = (META, *TRAIN_BATCHES, TEST_BATCH)
    raw = _read_members(src, names)
    missing = [n for n in names if n not in raw]
    if missing:
        raise DataError(f"{src}: not a complete CIFAR-10 python archive, missing {', '.join(missing)}")
    class_names = _class_names(_unpickle(raw[META], f"{src}:{META}"), f"{src}:{META}")
    xs, ys = [], []
    for n in TRAIN_BATCHES:
        x, y = _images_and_labels(_unpickle(raw.pop(n), f"{src}:{n}"), f"{src}:{n}")
        xs.append(x)
        ys.append(y)
    x_test, y_test = _images_and_labels(_unpickle(raw.pop(TEST_BATCH), f"{src}:{TEST_BATCH}"),
                                        f"{src}:{TEST_BATCH}")
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    if limit_train is not None:
        idx = balanced_subset(y_train, limit_train, seed)
        x_train, y_train = x_train[idx], y_train[idx]
    if limit_test is not None:
        idx = balanced_subset(y_test, limit_test, seed)
        x_test, y_test = x_test[idx], y_test[idx]
    return Dataset(x_train, y_train, x_test, y_test, class_names, str(src), dataset_sha256(src),
                   IMAGE_SHAPE, dict(GIVEN))


def check_limits(num_classes: int = MIN_CLASSES, **limits: int | None) -> None:
    """Subset sizes given as options (limit_train=..., limit_test=...) must hold one image per class.

    Before the data is read only MIN_CLASSES is known; load_data checks again with the set's classes.
    """
    for name, v in limits.items():
        if v is not None and v < num_classes:
            raise DataError(f"--{name.replace('_', '-')} must be >= {num_classes} (one image per class), "
                            f"got {v}")


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a seeded, class-balanced subset of size `n` (in the data's original order).

    With K classes each gets n // K images (the first n % K classes one more, a class with fewer gives
    all it has), drawn without replacement.
    """
    labels = np.asarray(labels)
    if not isinstance(n, int | np.integer) or n < 1:
        raise DataError(f"subset size must be a positive integer, got {n!r}")
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per, extra = divmod(n, len(classes))
    chosen = []
    for i, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        k = min(len(pool), per + (1 if i < extra else 0))
        chosen.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(chosen))



def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of a seeded, stratified `fraction` of `labels`: each class gives
    round(fraction * its count) images, at least one, never all of them."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the held-out fraction must be between 0 and 1 (exclusive), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) < 2:
            raise DataError(f"class {c} has {len(pool)} training image(s): a validation split needs >= 2")
        k = min(len(pool) - 1, max(1, round(fraction * len(pool))))
        chosen.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


HOLDOUT_RULE = "stratified-holdout-of-train"  # the split rule of a search data set (validation_split)


def evaluated_on(ds: Dataset) -> str:
    """What `ds`'s "test" part is: "validation" for a search data set (validation_split), else "test"."""
    return "validation" if ds.split.get("rule") == HOLDOUT_RULE else "test"


def validation_split(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, dict]:
    """A search data set from `ds`'s TRAINING images: its train part is the rest, its "test" part is
    a seeded, stratified `fraction` held out (never `ds`'s test images), and the record of the split
    (seed, fraction, counts, sha256 of the held-out indices) for the output."""
    held = stratified_holdout(ds.y_train, fraction, seed)
    rest = np.setdiff1d(np.arange(len(ds.y_train)), held)
    record = {"rule": HOLDOUT_RULE, "seed": seed, "fraction": fraction,
              "train_images": int(len(rest)), "validation_images": int(len(held)),
              "test_images_untouched": int(len(ds.y_test)),
              "indices_sha256": hashlib.sha256(held.astype(np.int64).tobytes()).hexdigest()}
    split = {**record, "of": dict(ds.split)}
    search = Dataset(ds.x_train[rest], ds.y_train[rest], ds.x_train[held], ds.y_train[held], ds.class_names,
                     ds.source, ds.sha256, ds.input_shape, split)
    return search, record

__all__ = ["Dataset", "load_data", "balanced_subset", "check_limits",
           "resolve_data_path", "scale_pixels", "dataset_sha256", "validation_split"]
