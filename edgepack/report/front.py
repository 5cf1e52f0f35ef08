"""The top of the comparison report: the recommendation's context, the Pareto front of size vs accuracy
as a small table, and the labels of the Pareto plot (only its front points carry one).

The front is computed once here (`front`) and read by the table and by the plot
(edgepack.report.plots.write_pareto), so the "#" of a table row is the label of its point. Plain
strings; edgepack.report.render escapes and lays them out (Markdown and HTML).
"""

from __future__ import annotations

from edgepack.report import hosts
from edgepack.report.rows import ResultRow, Results

Table = tuple[str, list[str], list[list[str]]]
Point = tuple[float, float, ResultRow]  # (gzip'ed size KiB, accuracy %, row)


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats on both size (smaller) and accuracy (higher), smallest first."""
    front, best = [], float("-inf")
    for x, y, r in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y, r))
            best = y
    return front


def size_points(results: Results) -> list[Point]:
    """(gzip'ed KiB, accuracy %, row) of every row measured ok with an accuracy and a size."""
    return [(r.size_gzip_bytes / 1024, 100 * r.accuracy, r) for r in results.rows
            if r.ok and r.accuracy is not None and r.size_gzip_bytes]


def front(results: Results) -> list[ResultRow]:
    """The rows on the size/accuracy Pareto front, smallest first."""
    return [r for _, _, r in pareto_front(size_points(results))]


def labels(points: list[Point]) -> dict[str, str]:
    """{row id: text label} for the plot: "1", "2", ... on the front's points (smallest first, the
    "#" of the front table), nothing for any other point: ~100 ids drawn at once overlap."""
    return {r.id: str(i) for i, (_, _, r) in enumerate(pareto_front(points), 1)}


def _role(row: ResultRow, results: Results) -> str:
    if row.recommended:
        return " (recommended)"
    return " (baseline)" if row.id == results.baseline else ""


def _f(v, fmt: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


def front_table(results: Results) -> Table:
    """The front's rows with the figures a user picks by (the same numbers as the Variants table)."""
    headers = ["#", "id", "gzip KiB", "x smaller (gzip)", "accuracy %", "change (pts)",
               "change vs control (pts)", "p50 ms 1 thread"]
    groups = results.cpu_groups
    out = []
    for i, r in enumerate(front(results), 1):
        one = r.latency.threads_1
        out.append([str(i), r.id + _role(r, results), _f(r.size_gzip_bytes, ".1f", 1 / 1024),
                    _f(r.size_ratio_gzip, ".2f"), _f(r.accuracy, ".2f", 100),
                    _f(r.delta_pts_vs_baseline, "+.2f"), _f(r.delta_pts_vs_control, "+.2f"),
                    _f(one and one.p50_ms, ".3f") + hosts.label(r, groups)])
    return "Pareto front: size vs accuracy", headers, out


FRONT_TEXT = ("The rows no other row beats on both gzip'ed size and accuracy, smallest first; # is the "
              "point's label in the plot below (latency is its colour there, not a criterion of the front).")


def context_lines(results: Results) -> list[str]:
    """Lines after the recommendation: the baseline's own figures (what the changes are against), the
    target if one was given, and how many rows failed or were skipped (their section says why)."""
    lines = []
    base = results.row(results.baseline)
    if base is not None and base.ok:
        one = base.latency.best()
        threads = "1 thread" if base.latency.threads_1 else "all cores"
        lines.append(f"Baseline {base.id}: accuracy {_f(base.accuracy, '.2f', 100)}%, "
                     f"{_f(base.size_gzip_bytes, '.1f', 1 / 1024)} KiB gzip'ed"
                     + (f", p50 {one.p50_ms:.3f} ms ({threads})" if one else "") + ".")
    target = results.target
    if target:
        lines.append(f"Target {target.name}: {target.summary}; its RAM, flash and fit per file are in "
                     f"the section Target {target.name} below.")
    failed = sum(r.status == "error" for r in results.rows)
    skipped = sum(r.status == "skipped" for r in results.rows)
    if failed or skipped:
        lines.append(f"{failed} of {len(results.rows)} rows failed and {skipped} were skipped (not "
                     "applicable): see Failures and skipped models below.")
    return lines


def quick_line(results: Results) -> list[str]:
    """The --quick warning, first on the page: these are not the real figures."""
    if (results.settings or {}).get("quick"):
        return ["**Quick smoke run (--quick): a subset and few timing runs, not the real figures.**"]
    return []
