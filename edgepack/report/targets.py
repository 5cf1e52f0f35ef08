"""`compare --target NAME --ram SIZE --flash SIZE`: each row's figures on the target, which rows fit,
the closest when none does, and the report's section for the target (edgepack.target).

results.json gains "target" (null for the host target):
    {name, summary, kernels, ram_method, flash_method, budget: {ram_bytes, flash_bytes} (null = none),
     runnable: [row ids the target runs], fitting: [row ids that fit every budget], closest: the row id
     nearest to fitting when none fits (smallest largest figure/budget ratio), or null,
     none_fit: true when no row fits (the CLI then exits with EXIT_NONE_FITS)}
and every row "target": edgepack.target.Figures.as_dict() (null for the host target).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from edgepack.report.inputs import Entry
from edgepack.target import TARGETS, Budget, Figures, Target
from edgepack.target.figures import unrunnable

if TYPE_CHECKING:  # the command-line parser imports this module: no pydantic at run time
    from edgepack.report.rows import ResultRow, Results

EXIT_NONE_FITS = 3  # compare / pipeline exit status when a target is given and no file fits it
KERAS_REASON = "a Keras model, not an exported file: export it (tflite-int8) to deploy it"


def row_figures(target: Target, budget: Budget, entry: Entry, row: ResultRow, ds, pred: np.ndarray | None,
                workers: int, progress: Callable[[str], None] = print) -> Figures | None:
    """The row's "target" object: the target's checks of the file, judged against the budget."""
    if target.check is None:
        return None
    if entry.kind == "run":
        return unrunnable(target.name, KERAS_REASON)
    if not row.ok:
        return None
    try:
        fig = target.check(entry.path, ds.x_test, ds.y_test, pred, workers, progress)
    except Exception as e:  # a failure of the target's checks is this row's, not the comparison's
        text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        fig = unrunnable(target.name, f"{type(e).__name__}: {text}")
    return budget.judge(fig)


def _ratio(t: Figures, budget: Budget) -> float:
    """How far a runnable row is from fitting: its largest figure / budget (smaller form of the two)."""
    stored = budget.overs(t.ram_bytes, t.flash_bytes)
    forms = [max(stored.values(), default=0.0)]
    if t.compressed_flash_bytes is not None:
        packed = budget.overs(t.compressed_ram_bytes, t.compressed_flash_bytes)
        forms.append(max(packed.values(), default=0.0))
    return min(forms)


def summarise(results: Results, target: Target, budget: Budget) -> None:
    """results.target: the target, its budget, which rows run and fit, the closest if none fits."""
    if target.check is None:
        results.target = None
        return
    rows = [r for r in results.rows if r.target]
    runnable = [r for r in rows if r.target.runs]
    fitting = [r for r in runnable if r.target.fits]
    closest = None
    if not fitting and runnable:
        closest = min(runnable, key=lambda r: (_ratio(r.target, budget), r.target.flash_bytes))
    results.target = {
        "name": target.name, "summary": target.summary, "kernels": target.kernels, "budgets": target.budgets,
        "ram_method": target.ram, "flash_method": target.flash, "budget": budget.as_dict(),
        "runnable": [r.id for r in runnable], "fitting": [r.id for r in fitting],
        "closest": closest.id if closest else None, "none_fit": not fitting,
    }


def allowed(results: Results) -> Callable[[ResultRow], bool]:
    """Which rows the recommendation may pick: with a device target, only files that run and fit."""
    if not results.target:
        return lambda r: True
    fitting = set(results.target.fitting)
    return lambda r: r.id in fitting


def deployed_bytes(row: ResultRow) -> int | None:
    """Flash of the row's file on the target in the form that fits (as stored, or after the target's
    compression); None where the target gives no flash figure."""
    t = row.target
    if t is None:
        return None
    return t.compressed_flash_bytes if t.fits_as == "compressed" else t.flash_bytes


def none_fit_line(results: Results) -> str | None:
    """One line when a target was given and no file fits it (naming the closest), else None."""
    t = results.target
    if not t or not t.none_fit:
        return None
    if not t.runnable:
        return (f"no file runs on {t.name}: every row is a Keras model or a file it does not run "
                "(the report says why for each)")
    row = results.row(t.closest)
    return f"no file fits {t.name} within {_budget_text(t.budget)}; closest: {row.id} " \
           f"({row.target.verdict.removeprefix('does not fit: ')})"


def _budget_text(b: dict) -> str:
    parts = [f"{k.upper() if k == 'ram' else k} {b[f'{k}_bytes']:,} B" for k in ("ram", "flash")
             if b.get(f"{k}_bytes") is not None]
    return " and ".join(parts) or "no budget"


def _kib(v) -> str:
    return "-" if v is None else f"{v / 1024:.1f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def section(results: Results) -> tuple[list[str], tuple[str, list[str], list[list[str]]]] | None:
    """(lines, table) of the report's target section, or None for the host target."""
    t = results.target
    if not t:
        return None
    lines = [f"{t.name}: {t.summary}.",
             f"RAM: {t.ram_method}; flash: {t.flash_method}; accuracy on {t.kernels} kernels, "
             "agreement = same top-1 as the same file on its runtime here (LiteRT or ONNX Runtime).",
             f"Budget: {_budget_text(t.budget)}. Runs: {len(t.runnable)} files; fit: "
             f"{', '.join(t.fitting) or 'none'}."]
    if t.none_fit:
        lines.append(none_fit_line(results))
    if not t.budgets:  # accuracy-only targets (arm64): no device memory columns
        lines = [lines[0], f"Accuracy on {t.kernels}; agreement = same top-1 as the same file on "
                           "this machine. No RAM, flash or latency figures (emulated)."]
        return lines, (f"Target {t.name}", ["id", "accuracy there %", "accuracy here %",
                                             "agreement %", "verdict"],
                       [[r.id, _pct(r.target.accuracy), _pct(r.accuracy),
                         _pct(r.target.agreement), r.target.verdict or "-"]
                        for r in results.rows if r.target])
    headers = ["id", "RAM (arena) KiB", "flash as stored KiB", "flash after LUT KiB (its RAM KiB)",
               "gzip KiB", f"accuracy on {t.kernels} %", "accuracy here %", "agreement %", "fit"]
    out = []
    for r in results.rows:
        f = r.target
        if not f:
            continue
        lut = "-" if f.compressed_flash_bytes is None else \
            f"{_kib(f.compressed_flash_bytes)} ({_kib(f.compressed_ram_bytes)})"
        out.append([r.id, _kib(f.ram_bytes), _kib(f.flash_bytes), lut, _kib(r.size_gzip_bytes),
                    _pct(f.accuracy), _pct(r.accuracy), _pct(f.agreement), f.verdict or "-"])
    return lines, (f"Target {t.name}", headers, out)


def flat(row: ResultRow) -> dict:
    """The row's target figures as CSV columns (target_*)."""
    f = row.target
    keys = ("runs", "reason", "ram_bytes", "flash_bytes", "compressed_flash_bytes", "compressed_ram_bytes",
            "accuracy", "agreement", "fits", "fits_as", "verdict")
    return {f"target_{k}": getattr(f, k) for k in keys} if f else {}


__all__ = ["EXIT_NONE_FITS", "TARGETS", "Figures", "allowed", "none_fit_line", "row_figures", "section",
           "summarise"]
