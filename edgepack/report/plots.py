"""PNG plots of a comparison: accuracy vs latency and accuracy vs size (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from edgepack.report.front import labels, size_points
from edgepack.report.rows import ResultRow, Results

# Marker by format, colour by variant: with ~50 points, labels on every point would be unreadable.
MARKERS = {"keras": "s", "tflite-fp32": "o", "tflite-fp16": "D", "tflite-dynamic": "v", "tflite-int8": "^",
           "onnx-fp32": "P", "onnx-int8": "X"}
OTHER_MARKER = "*"


def _latency(row: ResultRow) -> tuple[float | None, str]:
    for key, label in (("threads_1", "1 thread"), ("threads_all", "all cores")):
        if row.latency.p50(key) is not None:
            return row.latency.p50(key), label
    return None, ""


def _log_x(ax) -> None:
    """A log x axis labelled in plain numbers at 1-2-5 (no 10^2 notation, no overlapping labels)."""
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)


def _scatter(path: Path, title: str, xlabel: str, points: list[tuple[float, float, ResultRow]],
             baseline_acc: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    if points:
        variants = list(dict.fromkeys(r.variant for _, _, r in points))
        colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
        formats = list(dict.fromkeys(r.format for _, _, r in points))
        for x, y, r in points:
            ax.scatter([x], [y], marker=MARKERS.get(r.format, OTHER_MARKER), color=colours[r.variant],
                       s=60 if r.recommended else 36, alpha=0.85,
                       edgecolors="black" if r.recommended else "none")
            if r.recommended:
                ax.annotate("recommended: " + r.id, (x, y), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        if all(x > 0 for x, _, _ in points):
            _log_x(ax)
        if baseline_acc is not None:
            ax.axhline(baseline_acc, color="grey", linestyle="--", linewidth=0.8)
        handles = [Line2D([], [], linestyle="", marker="o", color=colours[v], label=v) for v in variants]
        handles += [Line2D([], [], linestyle="", marker=MARKERS.get(f, OTHER_MARKER), color="black",
                           fillstyle="none", label=f) for f in formats]
        handles.append(Line2D([], [], color="grey", linestyle="--", label="baseline accuracy"))
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy %")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


PARETO = "pareto.png"


def _noise_bars(ax, points, alpha: float = 1.0) -> None:
    """Vertical bars: each row's 95% paired-bootstrap interval of its change against the baseline, so a
    zoomed-in accuracy axis does not make noise look like a difference."""
    for x, y, r in points:
        c = r.confidence.vs_baseline if r.confidence else None
        if c:
            lo, hi = c.ci_pts
            ax.errorbar([x], [y], yerr=[[max(0.0, c.delta_pts - lo)], [max(0.0, hi - c.delta_pts)]],
                        color="grey", linewidth=0.8, capsize=3, zorder=0, alpha=alpha)


def write_pareto(results: Results, path: Path) -> None:
    """Accuracy vs gzip'ed size, colour = 1-thread p50 latency (all cores if missing), the front joined:
    the trade-off a user picks from. Only the front's points are labelled ("1", "2", ...: the # of the
    report's front table, ids in the key on the right); the others are drawn smaller and lighter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    points = size_points(results)
    names = labels(points)
    on = sorted((p for p in points if p[2].id in names), key=lambda p: int(names[p[2].id]))
    off = [p for p in points if p[2].id not in names]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=90)
    lat = [_latency(r)[0] for _, _, r in points]
    known = [v for v in lat if v is not None]
    if points:
        norm = plt.Normalize(min(known), max(known)) if known else None
        for group, size, alpha, edge in ((off, 22, 0.3, "none"), (on, 60, 1.0, "black")):
            glat = [_latency(r)[0] for _, _, r in group]
            colour = ({"c": [v if v is not None else float("nan") for v in glat], "cmap": "viridis",
                       "norm": norm, "plotnonfinite": True} if known else {"color": "tab:blue"})
            sc = ax.scatter([p[0] for p in group], [p[1] for p in group], s=size, alpha=alpha,
                            edgecolors=edge, linewidths=0.6, zorder=2, **colour)
        if known:
            fig.colorbar(sc, ax=ax, pad=0.01,
                         label="p50 latency ms, batch 1 (" + (_latency(points[0][2])[1] or "-") + ")")
        _noise_bars(ax, off, alpha=0.25)
        _noise_bars(ax, on)
        ax.plot([p[0] for p in on], [p[1] for p in on], color="black", linewidth=0.8, zorder=1)
        for i, (x, y, r) in enumerate(on):  # neighbours on the front alternate sides: no overlap
            ax.annotate(names[r.id], (x, y), fontsize=9, fontweight="bold", textcoords="offset points",
                        xytext=(-5, 5) if i % 2 == 0 else (5, -12), ha="right" if i % 2 == 0 else "left",
                        color="red" if r.recommended else "black")
        rec = [p for p in points if p[2].recommended]
        if rec:
            ax.scatter([rec[0][0]], [rec[0][1]], s=180, facecolors="none", edgecolors="red", linewidths=1.5,
                       zorder=2.5)  # under the labels (text: zorder 3)
        if all(p[0] > 0 for p in points):
            _log_x(ax)
        key = [Line2D([], [], color="black", linewidth=0.8, label="Pareto front (labelled: # below)"),
               Line2D([], [], linestyle="", marker="o", color="grey", alpha=0.3, label="other rows")]
        if rec:
            key.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="none", markeredgecolor="red",
                              markersize=10, label="recommended"))
        key += [Line2D([], [], linestyle="", label=f"{names[r.id]}  {r.id}"
                       + (" (recommended)" if r.recommended else "")) for _, _, r in on]
        ax.legend(handles=key, fontsize=8, loc="upper left", bbox_to_anchor=(1.15, 1.0), handlelength=1.2,
                  borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("gzip'ed size KiB (log)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Accuracy vs size: the Pareto front (colour: latency; bars: 95% interval of the change)")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)


def write_plots(results: Results, folder: Path) -> dict[str, str]:
    """Write the detail plots into `folder` (and PARETO, used by the summary); returns {title: file name}
    of the detail plots."""
    write_pareto(results, folder / PARETO)
    ok = [r for r in results.rows if r.ok and r.accuracy is not None]
    base = next((r for r in ok if r.id == results.baseline), None)
    base_acc = 100 * base.accuracy if base else None
    lat_points, label = [], "p50 latency ms, batch 1"
    for r in ok:
        ms, threads = _latency(r)
        if ms is not None:
            lat_points.append((ms, 100 * r.accuracy, r))
            label = f"p50 latency ms, batch 1 ({threads})"
    size_points = [(r.size_gzip_bytes / 1024, 100 * r.accuracy, r) for r in ok if r.size_gzip_bytes]
    images = {"Accuracy vs latency": "accuracy_vs_latency.png", "Accuracy vs size": "accuracy_vs_size.png"}
    _scatter(folder / images["Accuracy vs latency"], "Accuracy vs latency", label, lat_points, base_acc)
    _scatter(folder / images["Accuracy vs size"], "Accuracy vs size", "gzip'ed size KiB", size_points,
             base_acc)
    return images
