"""PNG plots of a comparison: accuracy vs latency and accuracy vs size (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

# Marker by format, colour by variant: with ~50 points, labels on every point would be unreadable.
MARKERS = {"keras": "s", "tflite-fp32": "o", "tflite-fp16": "D", "tflite-dynamic": "v", "tflite-int8": "^",
           "onnx-fp32": "P", "onnx-int8": "X"}
OTHER_MARKER = "*"


def _latency(row: dict) -> tuple[float | None, str]:
    lat = row.get("latency") or {}
    for key, label in (("threads_1", "1 thread"), ("threads_all", "all cores")):
        if lat.get(key):
            return lat[key]["p50_ms"], label
    return None, ""


def _scatter(path: Path, title: str, xlabel: str, points: list[tuple[float, float, dict]],
             baseline_acc: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    if points:
        variants = list(dict.fromkeys(r["variant"] for _, _, r in points))
        colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
        formats = list(dict.fromkeys(r["format"] for _, _, r in points))
        for x, y, r in points:
            ax.scatter([x], [y], marker=MARKERS.get(r["format"], OTHER_MARKER), color=colours[r["variant"]],
                       s=60 if r["recommended"] else 36, alpha=0.85,
                       edgecolors="black" if r["recommended"] else "none")
            if r["recommended"]:
                ax.annotate("recommended: " + r["id"], (x, y), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        if all(x > 0 for x, _, _ in points):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # labels at 1-2-5: no overlaps
            ax.xaxis.set_minor_formatter(ScalarFormatter())
            ax.tick_params(axis="x", which="minor", labelsize=7)
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


def write_plots(results: dict, folder: Path) -> dict[str, str]:
    """Write the plots into `folder`; returns {title: file name}."""
    ok = [r for r in results["rows"] if r["status"] == "ok" and r["accuracy"] is not None]
    base = next((r for r in ok if r["id"] == results.get("baseline")), None)
    base_acc = 100 * base["accuracy"] if base else None
    lat_points, label = [], "p50 latency ms, batch 1"
    for r in ok:
        ms, threads = _latency(r)
        if ms is not None:
            lat_points.append((ms, 100 * r["accuracy"], r))
            label = f"p50 latency ms, batch 1 ({threads})"
    size_points = [(r["size_gzip_bytes"] / 1024, 100 * r["accuracy"], r) for r in ok if r["size_gzip_bytes"]]
    images = {"Accuracy vs latency": "accuracy_vs_latency.png", "Accuracy vs size": "accuracy_vs_size.png"}
    _scatter(folder / images["Accuracy vs latency"], "Accuracy vs latency", label, lat_points, base_acc)
    _scatter(folder / images["Accuracy vs size"], "Accuracy vs size", "gzip'ed size KiB", size_points,
             base_acc)
    return images
