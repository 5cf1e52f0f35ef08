"""PNG plots of a comparison: accuracy vs latency and accuracy vs size (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

MARKERS = {"keras": "s", "tflite": "o", "onnx": "^"}  # by format family


def _family(fmt: str) -> str:
    return fmt.split("-")[0]


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

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=100)
    if points:
        for fam, marker in MARKERS.items():
            sel = [(x, y, r) for x, y, r in points if _family(r["format"]) == fam]
            if sel:
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], marker=marker, label=fam, s=36)
        for x, y, r in points:
            ax.annotate(r["id"] + (" *" if r["recommended"] else ""), (x, y), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
        if all(x > 0 for x, _, _ in points):
            ax.set_xscale("log")
        if baseline_acc is not None:
            ax.axhline(baseline_acc, color="grey", linestyle="--", linewidth=0.8, label="baseline")
        ax.legend(fontsize=8)
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
    _scatter(folder / images["Accuracy vs size"], "Accuracy vs size", "gzip'ed size KB", size_points,
             base_acc)
    return images
