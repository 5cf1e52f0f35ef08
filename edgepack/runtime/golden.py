"""Golden vectors: a few labelled images with an exported file's expected outputs, to check a deployment.

Export writes `<file>.golden.npz` next to each file; `edgepack verify FILE GOLDEN` (or `verify()`)
runs FILE through edgepack.runtime on this machine's default kernels and checks it reproduces the
expected probabilities within the format's tolerance: an on-device regression test (numpy only).

The .npz holds plain arrays, never pickles:
    images     uint8 (N, H, W, C): class-balanced training images no calibration used (export's check images)
    labels     int64 (N,): their true classes
    expected   float32 (N, classes): the file's own probabilities on the engine's reference kernels
               (for int8: the file's exact arithmetic, whatever the CPU)
    meta       0-d unicode array: JSON {schema_version, format, variant, source_sha256, model_sha256,
               class_names, atol, kernels, rule, edgepack_version}

Rule: every probability within `atol` of the expected one, and the same top-1 class wherever the
expected top-1 leads by more than 2 * atol (there an allowed error could not change it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack import runtime
from edgepack.errors import EdgepackError
from edgepack.runtime.metadata import MetadataError, read_sidecar
from edgepack.runtime.preprocess import scale_pixels

SCHEMA_VERSION = 1
SUFFIX = ".golden.npz"
IMAGES = 16  # per file: ~40 KB compressed
# Largest allowed |probability - expected| by format: a device's kernels may round differently from the
# reference kernels the expected outputs come from. Float32: float reordering (measured <= 1.1e-6 here).
# Float16: half-precision accumulation. Integer formats (and dynamic range, whose activations are
# quantized at run time): 16 steps of the 1/256 int8 softmax output grid; XNNPACK's int8 kernels
# differed from LiteRT's reference kernels by up to 13 steps on 1,000 CIFAR-10 test images here.
ATOL = {"tflite-fp32": 1e-4, "onnx-fp32": 1e-4, "tflite-fp16": 1e-2}
INTEGER_ATOL = 16 / 256
RULE = "|p - expected| <= atol for every probability; same top-1 where the expected top-1 leads by > 2 * atol"


class GoldenError(EdgepackError, ValueError):
    """A golden file is missing, unreadable, or not for the model given."""


def tolerance_for(fmt: str) -> float:
    return ATOL.get(fmt, INTEGER_ATOL)


def golden_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + SUFFIX)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def balanced(labels: np.ndarray, n: int = IMAGES) -> np.ndarray:
    """Indices of `n` images taking each class in turn (first images of each class first)."""
    labels = np.asarray(labels)
    queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < min(n, len(labels)):
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop(0)))
    return np.array(out, dtype=np.int64)


def pixels_from_input(x: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 pixels whose scale_pixels(., spec) is `x` (the inverse of edgepack.runtime.preprocess);
    GoldenError if `x` is not scaled pixels."""
    v = np.asarray(x, np.float64)
    if spec.get("mean") is not None:
        v = v * np.asarray(spec["std"]) + np.asarray(spec["mean"])
    v = (v - float(spec.get("offset") or 0.0)) * float(spec["divisor"])
    pixels = np.clip(np.round(v), 0, 255).astype(np.uint8)
    if not np.allclose(scale_pixels(pixels, spec), x, atol=1e-6, rtol=0):
        raise GoldenError("the check images are not uint8 pixels scaled by the model's pixel_scaling")
    return pixels


def write_golden(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, expected: np.ndarray,
                 meta: dict) -> Path:
    """Write the .npz atomically (temporary name, then rename); `meta` must hold atol and format."""
    path = Path(path)
    meta = {"schema_version": SCHEMA_VERSION, "rule": RULE, **meta}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, images=np.asarray(images, np.uint8), labels=np.asarray(labels, np.int64),
                            expected=np.asarray(expected, np.float32), meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)
    return path


def write_for(model_path: str | os.PathLike, x_check: np.ndarray, y_check: np.ndarray,
              kernels: str = "reference") -> Path:
    """Export's hook: golden vectors for a file that passed its check, from its float check images.
    The expected outputs come from `kernels` (runtime.load's): the engine's reference kernels, or
    "tflm" for a file meant for TensorFlow Lite Micro (a look-up-table file runs nowhere else)."""
    ref = runtime.load(model_path, kernels=kernels)
    meta = ref.metadata
    idx = balanced(y_check)
    images = pixels_from_input(x_check[idx], meta.pixel_scaling)
    return write_golden(golden_path(model_path), images, y_check[idx], ref.predict(images), {
        "format": meta.format, "variant": meta.variant, "source_sha256": meta.source_sha256,
        "model_sha256": sha256_file(model_path), "class_names": list(meta.class_names),
        "atol": tolerance_for(meta.format), "kernels": kernels,
        "edgepack_version": meta.edgepack_version})


def read_golden(path: str | os.PathLike) -> dict:
    """The golden file's arrays and meta, checked (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise GoldenError(f"no golden file: {path} not found; files exported before edgepack wrote golden "
                          f"vectors have none: re-export the model with this edgepack (`edgepack export` "
                          f"writes <file>{SUFFIX} beside it)")
    try:
        with np.load(path, allow_pickle=False) as z:
            got = {k: z[k] for k in ("images", "labels", "expected", "meta")}
        meta = json.loads(str(got["meta"]))
    except Exception as e:  # zip, npy and JSON errors: all mean "not a golden file"
        raise GoldenError(f"{path} is not an edgepack golden file ({type(e).__name__}): "
                          "re-export the model") from None
    n = len(got["images"])
    if (got["images"].dtype != np.uint8 or got["images"].ndim != 4 or got["expected"].shape[0] != n
            or len(got["labels"]) != n or not isinstance(meta, dict) or "atol" not in meta):
        raise GoldenError(f"{path}: arrays or meta of the wrong shape: re-export the model")
    got["meta"] = meta
    return got


@dataclass(frozen=True)
class VerifyResult:
    passed: bool
    line: str  # the one-line verdict
    first_bad: int | None  # index of the first image out of tolerance
    max_abs_diff: float | None


def _identity_problem(meta: dict, model) -> str | None:
    """Why the golden file (meta) belongs to another model than `model` (its FileMetadata), or None."""
    for key in ("format", "source_sha256", "variant"):
        mine = getattr(model, key)
        if meta.get(key) is not None and mine is not None and meta[key] != mine:
            return f"{key} {mine!r}, golden file's {meta[key]!r}"
    if list(meta.get("class_names") or []) != list(model.class_names):
        return "class names differ"
    return None


def verify(model_path: str | os.PathLike, golden: str | os.PathLike | None = None, threads: int | None = None,
           kernels: str = "default") -> VerifyResult:
    """Run `model_path` on the golden images with `kernels` (runtime.load's; "default" is what an app
    runs, "tflm" TensorFlow Lite Micro) and judge by RULE; `golden` defaults to the file beside it
    (golden_path). Raises GoldenError / ModelFileError for files that cannot be used."""
    golden = golden_path(model_path) if golden is None else golden
    g = read_golden(golden)
    meta, name = g["meta"], Path(model_path).name
    if kernels != "tflm" and _tflm_only(model_path):
        raise GoldenError(f"{name} has TFLM look-up-table weights and runs only on TensorFlow Lite Micro: "
                          "verify it with --kernels tflm")
    clf = runtime.load(model_path, threads=threads, kernels=kernels)
    wrong = _identity_problem(meta, clf.metadata)
    if wrong:
        return VerifyResult(False, f"FAIL {name}: {golden} is another model's golden file ({wrong})",
                            None, None)
    probs = clf.predict(g["images"])
    exp, atol = g["expected"], float(meta["atol"])
    if probs.shape != exp.shape:
        return VerifyResult(False, f"FAIL {name}: outputs {probs.shape}, golden {exp.shape}", None, None)
    diff = np.abs(probs - exp)
    top = np.sort(exp, axis=1)
    clear = top[:, -1] - top[:, -2] > 2 * atol
    bad = (diff.max(axis=1) > atol) | (clear & (probs.argmax(axis=1) != exp.argmax(axis=1)))
    same_file = sha256_file(model_path) == meta.get("model_sha256")
    changed = "" if same_file else " (file differs from the exported one)"
    worst = float(diff.max())
    if not bad.any():
        return VerifyResult(True, f"PASS {name}: {len(exp)} golden images within atol {atol:g} "
                                  f"(max |diff| {worst:.3g}){changed}", None, worst)
    return VerifyResult(False, _fail_line(name, g, probs, bad, atol) + changed, int(np.flatnonzero(bad)[0]),
                        worst)


def _tflm_only(model_path: str | os.PathLike) -> bool:
    """True for a file whose metadata says only TFLM runs it (`export --target tflm` look-up tables)."""
    if Path(model_path).suffix.lower() != ".tflite":
        return False
    try:
        return tuple(read_sidecar(model_path).runs_in) == ("tflite_micro",)
    except (FileNotFoundError, MetadataError):
        return False  # runtime.load names the problem


def _fail_line(name: str, g: dict, probs: np.ndarray, bad: np.ndarray, atol: float) -> str:
    """The first bad image: its worst class, and its top-1 against the expected one."""
    exp, names = g["expected"], g["meta"]["class_names"]
    i = int(np.flatnonzero(bad)[0])
    c = int(np.abs(probs[i] - exp[i]).argmax())
    return (f"FAIL {name}: image {i} (true {names[g['labels'][i]]}): probability of {names[c]} "
            f"{probs[i, c]:.4f}, expected {exp[i, c]:.4f} (|diff| {abs(probs[i, c] - exp[i, c]):.3g} > atol "
            f"{atol:g}); top-1 {names[probs[i].argmax()]}, expected {names[exp[i].argmax()]}; "
            f"{int(bad.sum())} of {len(exp)} images bad")
