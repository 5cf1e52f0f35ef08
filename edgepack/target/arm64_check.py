"""Every exported file on aarch64 ONNX Runtime / LiteRT (emulated) against the same file run here.

    from edgepack.target import arm64_check
    result = arm64_check.evaluate(["model.onnx", "model.tflite"], images, labels)

One emulated Python runs all files (edgepack.target.arm64); this machine runs them meanwhile with
its own engines. Each file gets a row: accuracy on both (with labels), top-1 agreement, the largest
output difference. A file that fails under emulation is a row with its error, not a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepack import runtime
from edgepack.errors import EdgepackError
from edgepack.metrics import top1_agreement
from edgepack.target import arm64
from edgepack.target.figures import Figures, unrunnable

MODEL_SUFFIXES = (".onnx", ".tflite")


@dataclass(frozen=True)
class FileResult:
    """One file on the emulated ARM64 CPU against this machine (a results JSON row)."""

    file: str  # the exported file
    runs: bool  # it loaded and ran under emulation
    error: str | None = None  # one line: why it did not (runs False)
    runtime: str | None = None  # onnxruntime or litert
    num_images: int = 0  # images compared
    accuracy: float | None = None  # top-1 accuracy on the ARM64 kernels (null without labels)
    native_accuracy: float | None = None  # the same file on this machine's kernels
    agreement: float | None = None  # share of images with the same top-1 on both
    max_abs_diff: float | None = None  # largest |probability difference| over all images and classes
    identical: bool | None = None  # every output bit-identical


@dataclass(frozen=True)
class Evaluation:
    """One `evaluate` call: the emulated CPU, its engines and a row per file."""

    cpu: str  # CPUS key
    guest: dict  # the emulated Python's versions and hwcaps
    files: list[FileResult] = field(default_factory=list)
    num_images: int = 0
    seconds: float = 0.0  # wall time of the whole check (emulation is slow; never a latency figure)

    def as_dict(self) -> dict:
        return asdict(self)


def compare(native: np.ndarray, emulated: np.ndarray, labels: np.ndarray | None) -> dict:
    """The figures of FileResult from two runs' probabilities (N, classes) and optional labels."""
    native, emulated = np.asarray(native, np.float32), np.asarray(emulated, np.float32)
    if native.shape != emulated.shape or native.ndim != 2 or not len(native):
        raise ValueError(f"outputs differ in shape: {native.shape} here vs {emulated.shape} emulated")
    a, b = native.argmax(1), emulated.argmax(1)
    figures = {"num_images": len(native), "agreement": top1_agreement(a, b),
               "max_abs_diff": float(np.abs(native - emulated).max()),
               "identical": bool(np.array_equal(native, emulated))}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(native):
            raise ValueError(f"{len(labels)} labels for {len(native)} images")
        figures |= {"accuracy": float(np.mean(b == labels)), "native_accuracy": float(np.mean(a == labels))}
    return figures


def model_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given and every .onnx / .tflite directly inside given folders (sorted)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in MODEL_SUFFIXES)
        elif p.suffix.lower() in MODEL_SUFFIXES and p.is_file():
            found.append(p)
        else:
            raise EdgepackError(f"{p}: not an exported .onnx/.tflite file or a folder of them")
    if not found:
        raise EdgepackError(f"no .onnx or .tflite files in {', '.join(map(str, paths))}")
    return found


def native_probs(path: Path, images: np.ndarray, threads: int | None) -> np.ndarray | None:
    """The file on this machine's engines (their default kernels), or None if it does not load."""
    try:
        return runtime.load(path, threads=threads).predict(images)
    except EdgepackError:
        return None


def emulated(files: list[Path], images: np.ndarray, root: Path | None = None, cpu: str = arm64.DEFAULT_CPU,
             threads: int = 1, progress: Callable[[str], None] = print, here=None):
    """Run `files` on `images` (uint8 NHWC) under the emulated `cpu` (the root built if missing) and
    `here()` on this machine meanwhile. Returns (guest versions, per-file guest records with their
    probabilities under "emulated", here()'s result)."""
    arm64.get_cpu(cpu)
    root = arm64.build_root(root, progress)
    with tempfile.TemporaryDirectory(prefix="edgepack-arm64-out-") as tmp:
        out = Path(tmp)
        np.save(out / "images.npy", np.ascontiguousarray(images))
        request = {"files": [str(Path(f).resolve()) for f in files], "images": str(out / "images.npy"),
                   "out": str(out), "threads": threads}
        (out / "request.json").write_text(json.dumps(request))
        progress(f"arm64: {len(files)} files x {len(images)} images under qemu-aarch64 -cpu {cpu}")
        with ThreadPoolExecutor(1) as pool:  # the emulated run and this machine's run side by side
            guest = pool.submit(arm64.run_guest, root, [str(out / "request.json")], cpu, None, progress)
            mine = here() if here else None
            guest.result()
        result = json.loads((out / "results.json").read_text())
        for r in result["files"]:
            r["emulated"] = np.load(out / r["probs"], allow_pickle=False) if r["ok"] else None
    return result["guest"], result["files"], mine


def evaluate(files: list[Path], images: np.ndarray, labels: np.ndarray | None = None,
             root: Path | None = None, cpu: str = arm64.DEFAULT_CPU, threads: int = 1,
             progress: Callable[[str], None] = print) -> Evaluation:
    """Run `files` on `images` (uint8 NHWC) under the emulated `cpu` and here; a row per file."""
    start = time.perf_counter()
    guest, records, native = emulated(files, images, root, cpu, threads, progress,
                                      here=lambda: [native_probs(Path(f), images, threads) for f in files])
    rows = [_row(r, nat, labels) for r, nat in zip(records, native, strict=True)]
    return Evaluation(cpu, guest, rows, len(images), round(time.perf_counter() - start, 1))


def _row(guest: dict, native: np.ndarray | None, labels: np.ndarray | None) -> FileResult:
    if not guest["ok"]:
        return FileResult(guest["file"], runs=False, error=guest["error"])
    if native is None:
        return FileResult(guest["file"], runs=True, runtime=guest["runtime"],
                          error="does not load on this machine: nothing to compare with")
    return FileResult(guest["file"], runs=True, runtime=guest["runtime"],
                      **compare(native, guest["emulated"], labels))


def runs(path: Path) -> str | None:
    """The arm64 target runs every exported .onnx and .tflite file (None), nothing else."""
    if Path(path).suffix.lower() in MODEL_SUFFIXES:
        return None
    return f"a {Path(path).suffix or 'suffix-less'} file: ONNX Runtime and LiteRT run .onnx / .tflite files"


def check(path: Path, x: np.ndarray, y: np.ndarray, row_pred: np.ndarray | None, workers: int = 1,
          progress: Callable[[str], None] = print) -> Figures:
    """One file's target figures (edgepack.target.Check): accuracy on the emulated ARM64 engines and
    top-1 agreement with the row's own run here; no RAM, flash or time figure of the device."""
    start = time.perf_counter()
    reason = runs(path)
    if reason:
        return unrunnable(arm64.NAME, reason)
    _, [record], _ = emulated([Path(path)], x, progress=progress)
    if not record["ok"]:
        return unrunnable(arm64.NAME, f"fails on aarch64: {record['error']}")
    pred = record["emulated"].argmax(axis=1)
    return Figures(arm64.NAME, runs=True, accuracy=float(np.mean(pred == np.asarray(y).reshape(-1))),
                   agreement=None if row_pred is None else top1_agreement(pred, np.asarray(row_pred)),
                   num_images=int(len(x)), seconds=round(time.perf_counter() - start, 2))


def write_json(evaluation: Evaluation, path: Path) -> None:
    """The evaluation as JSON, written under a temporary name then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(evaluation.as_dict(), indent=1))
    tmp.replace(path)


def table(evaluation: Evaluation) -> str:
    """The rows for a terminal: accuracy here and on ARM64, agreement, largest difference."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [f"{'file':<40} {'runtime':<12} {'images':>7} {'x86-64':>8} {'arm64':>8} {'agree':>8} "
             f"{'max diff':>9}"]
    for r in evaluation.files:
        name = "/".join(Path(r.file).parts[-2:])  # exports of several models share file names
        if r.error:
            lines.append(f"{name:<40} {r.runtime or '-':<12} {'':>7} {r.error}")
            continue
        lines.append(f"{name:<40} {r.runtime:<12} {r.num_images:>7} {pct(r.native_accuracy):>8} "
                     f"{pct(r.accuracy):>8} {pct(r.agreement):>8} {r.max_abs_diff:>9.2g}")
    g = evaluation.guest
    lines.append(f"emulated aarch64 -cpu {evaluation.cpu} ({', '.join(g.get('hwcaps', []))}): onnxruntime "
                 f"{g.get('onnxruntime')}, ai-edge-litert {g.get('ai_edge_litert')}; "
                 f"{evaluation.seconds:.0f} s (emulated: accuracy only, no latency)")
    return "\n".join(lines)
