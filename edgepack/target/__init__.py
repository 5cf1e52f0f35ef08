"""Deployment targets: where an exported file will run, in one name-keyed table (like FORMATS).

A target declares which exported files it runs (and why not the others), how its RAM and flash are
measured, and which runtime's kernels prove a file's accuracy there. `edgepack compare/pipeline
--target NAME [--ram SIZE] [--flash SIZE]` check every file against it (edgepack.report.targets).

    host   this machine, as edgepack always measured: every file, LiteRT / ONNX Runtime (the default)
    tflm   Cortex-M class microcontrollers through TensorFlow Lite Micro (edgepack.target.tflm)
    arm64  phones, Raspberry Pi class boards, Graviton: aarch64 ONNX Runtime / LiteRT under qemu-user
           (edgepack.target.arm64, arm64_check)
    browser web pages: .onnx files on onnxruntime-web in headless Chromium (edgepack.target.browser)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.target import arm64, arm64_check, browser, tflm
from edgepack.target.budget import Budget, parse_bytes, show_bytes
from edgepack.target.figures import Figures

# check(path, x_test uint8, y_test, row_top1 or None, workers, progress) -> Figures
Check = Callable[[Path, np.ndarray, np.ndarray, "np.ndarray | None", int, Callable[[str], None]], Figures]


@dataclass(frozen=True)
class Target:
    """One place exported files run."""

    name: str  # --target NAME
    summary: str  # one line for --help and the report
    runs: Callable[[Path], str | None]  # None if the target runs the file, else one line saying why not
    check: Check | None  # measures a file it runs (None: the rows' own figures are the target's)
    kernels: str  # whose kernels prove accuracy there (edgepack.runtime.load's kernels=, or "row")
    ram: str  # how RAM is measured, for the report
    flash: str  # how flash (storage) is measured, for the report
    memory: Callable[[Path], tuple[int | None, int | None]] | None  # a runnable file's (RAM, flash) bytes
    budgets: bool  # --ram / --flash apply
    ready: Callable[[], None] = lambda: None  # raises EdgepackError (one line) if its checks cannot run


def _host_runs(path: Path) -> str | None:
    return None


def _table() -> dict[str, Target]:
    return {
        "host": Target("host", "this machine: every exported file on LiteRT / ONNX Runtime (the default)",
                       runs=_host_runs, check=None, kernels="row", ram="process RSS (memory column)",
                       flash="file size", memory=None, budgets=False),
        "tflm": Target("tflm", "Cortex-M class microcontrollers through TensorFlow Lite Micro: fully "
                       "integer int8 .tflite files, int8 or uint8 input/output",
                       runs=tflm.runs, check=tflm.check, kernels="tflm",
                       ram="tensor arena: TFLM's RecordingMicroAllocator total after one invoke",
                       flash="the .tflite file as stored (and after TFLM LUT weight compression)",
                       memory=tflm.memory, budgets=True, ready=tflm.ready),
        "arm64": Target("arm64", "ARM64 Linux (phones, Raspberry Pi class boards, Graviton): every .onnx "
                        "and .tflite file on aarch64 ONNX Runtime / LiteRT, emulated (accuracy only)",
                        runs=arm64_check.runs, check=arm64_check.check,
                        kernels=f"aarch64 ONNX Runtime {arm64.WHEELS['onnxruntime']} / LiteRT "
                                f"{arm64.WHEELS['ai-edge-litert']} (qemu -cpu {arm64.DEFAULT_CPU})",
                        ram="not measured (emulated)", flash="not measured (emulated)", memory=None,
                        budgets=False, ready=arm64.require_tools),
        "browser": Target("browser", "web pages: .onnx files (fp32 and int8) on onnxruntime-web's WASM "
                          "backend in headless Chromium",
                          runs=browser.runs, check=browser.check, kernels="onnxruntime-web (wasm)",
                          ram="not measured (the browser tab's memory)",
                          flash="the .onnx file as downloaded (plus onnxruntime-web's WASM, ~15 MB)",
                          memory=None, budgets=False, ready=browser.ready),
    }


TARGETS: dict[str, Target] = _table()
DEFAULT = "host"


def get(name: str) -> Target:
    if name not in TARGETS:
        raise EdgepackError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def fits(target: str, budget: Budget, path: Path) -> bool:
    """The file runs on the target and fits the budget as stored (RAM and flash only: no accuracy
    pass; for choosing among many files, e.g. a search's)."""
    t = get(target)
    if t.runs(Path(path)) is not None:
        return False
    return t.memory is None or not budget.overs(*t.memory(Path(path)))


def check_budget(target: str, budget: Budget) -> None:
    """The target exists, its checks can run here, and budgets are given only to a device target."""
    get(target).ready()
    if budget.given and not get(target).budgets:
        raise EdgepackError(f"--ram/--flash are budgets of a device: add --target "
                            f"{' or '.join(n for n, t in TARGETS.items() if t.budgets)}")


__all__ = ["Budget", "DEFAULT", "Figures", "TARGETS", "Target", "check_budget", "fits", "get", "parse_bytes",
           "show_bytes"]
