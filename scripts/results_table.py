"""The README's results table, generated from a comparison's results.json (a real run, never typed in).

    python scripts/results_table.py runs/pipeline/report/results.json

Prints a dated header (the run's date, CPU model and ISA flags, data) and one Markdown table: the
baseline's Keras row and int8 files, every compressed variant's int8 files, the recommendation
marked. The command the run came from is the caller's to state (the report records the settings).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.export.formats import INTEGER_FORMATS
from edgepack.report.rows import read_results

NAMES = {"keras": "Keras", "tflite-int8": "TFLite int8", "onnx-int8": "ONNX int8"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _pts(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


def rows_of(results) -> list:
    """The baseline's Keras row, then every int8 row that is not a control's, in the report's order."""
    ok = [r for r in results.rows if r.status == "ok"]
    base = [r for r in ok if r.id == results.baseline]
    files = [r for r in ok if r.format in INTEGER_FORMATS and r.technique != "finetune"]
    return base + files


def table(results) -> list[str]:
    lines = ["| model | gzip'ed size | x smaller | test accuracy (this CPU / exact reference) | vs baseline "
             "(pts) | vs its control (pts) | p50 ms, 1 thread |", "|---|---|---|---|---|---|---|"]
    for r in rows_of(results):
        name = f"{r.variant}, {NAMES.get(r.format, r.format)}"
        name += " **(recommended)**" if r.recommended else ""
        lat = r.latency.threads_1 or r.latency.threads_all
        acc = _pct(r.accuracy) + ("" if r.reference_accuracy is None else f" / {_pct(r.reference_accuracy)}")
        ratio = f"{r.size_ratio_gzip:.2f}" if r.size_ratio_gzip else "1.00"
        lines.append(f"| {name} | {r.size_gzip_bytes / 1024:.1f} KiB | {ratio} | {acc} | "
                     f"{_pts(r.delta_pts_vs_baseline)} | {_pts(r.delta_pts_vs_control)} | "
                     f"{'-' if lat is None else f'{lat.p50_ms:.3f}'} |")
    return lines


def header(results) -> str:
    cpu = results.environment["cpu"]
    return (f"{results.created[:10]}, {cpu['model']} ({', '.join(cpu['isa_flags'])}), "
            f"{results.data.num_test_images:,} test images from {Path(results.data.source).name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a comparison's results.json")
    args = p.parse_args(argv)
    try:
        results = read_results(args.results)
    except EdgepackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(header(results))
    print()
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
