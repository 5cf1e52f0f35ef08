"""Words for quantized rows, from measured facts: is int8 faster than fp32 here, and if not, why.

The figures come from the rows (1-thread batch-1 p50, same variant, same runtime family); the "why"
comes first from the file (the row's kernel_facts, edgepack.explain.kernels: unfused Q/DQ pairs, the
dynamic-range path, ops outside XNNPACK: true on every CPU), then from the CPU's int8 paths
(edgepack.runtime.cpu), recorded in the report's environment. A difference within the noise band
(compare.FAST_ENOUGH) is a tie, never a verdict.
"""

from __future__ import annotations

from edgepack.explain.kernels import slow_reasons
from edgepack.report.rows import ResultRow

FP32_TWIN = {"tflite-int8": "tflite-fp32", "tflite-dynamic": "tflite-fp32", "onnx-int8": "onnx-fp32"}
ENGINE = {"tflite": "litert", "onnx": "onnxruntime"}


def _p50(row: ResultRow) -> float | None:
    t = row.latency.best()
    return t.p50_ms if t else None


def speed_note(row: ResultRow, twin: ResultRow, family_rows: list[ResultRow], int8_paths: dict,
               noise: float) -> str | None:
    """One sentence on `row`'s speed against its fp32 `twin`; None without both latencies."""
    mine, theirs = _p50(row), _p50(twin)
    if not mine or not theirs:
        return None
    ratio = theirs / mine
    head = f"{row.format} {mine:.3f} ms vs {twin.format} {theirs:.3f} ms (1-thread p50)"
    path = int8_paths.get(ENGINE[row.format.split("-")[0]]) or {}
    if ratio >= noise:
        how = f" ({path['path']})" if path.get("path") else ""
        return f"{head}: {ratio:.1f}x faster than fp32 on this CPU{how}"
    why = []
    in_file = slow_reasons(row.kernel_facts) if row.kernel_facts else []
    if in_file:  # properties of the file: they hold on every CPU, so they come first
        why.append(f"the file runs {' and '.join(in_file)} (on every CPU)")
    if path.get("fast") is False or "VPMADDUBSW" in str(path.get("path")):
        why.append(f"this CPU ({int8_paths.get('isa')}) has no 8-bit dot-product instructions (VNNI/AMX): "
                   f"{path.get('path')} are not faster than the fp32 kernels")
    if not why:  # a CPU with VNNI/AMX and nothing in the file: nothing measured explains it; say so
        why.append(f"this CPU has 8-bit dot products ({int8_paths.get('isa')}), so a busy machine's noise is "
                   "the likely cause: re-measure side by side with `edgepack bench`")
    fastest = min((r for r in family_rows if _p50(r)), key=_p50, default=twin)
    verdict = "no faster than" if ratio > 1 / noise else "slower than"
    return (f"{head}: {verdict} fp32 on this CPU; {'; '.join(why)}. For speed here ship {fastest.format} "
            f"({_p50(fastest):.3f} ms); int8 stays the smallest file and the right one for CPUs with VNNI, "
            "AMX or ARM dot-product")


def add_speed_notes(rows: list[ResultRow], int8_paths: dict, noise: float) -> None:
    """Append a speed note to every quantized row that has its fp32 twin in the same report."""
    by_id = {r.id: r for r in rows}
    for r in rows:
        if not r.ok or r.format not in FP32_TWIN:
            continue
        twin = by_id.get(f"{r.variant}/{FP32_TWIN[r.format]}")
        if twin is None or not twin.ok:
            continue
        family = [x for x in rows if x.variant == r.variant and x.ok
                  and x.format.split("-")[0] == r.format.split("-")[0]]
        note = speed_note(r, twin, family, int8_paths, noise)
        if note:
            r.notes.append(note)
