"""`edgepack explain`: the per-layer table and memory of one int8 file, and the automatic selective mode.

Images: every figure that chooses something (the per-layer ranking, auto's stopping point) is taken
on validation images: class-balanced training images that calibration did not use (seed
VALIDATION_SEED). They are held out from calibration, not from training: the baseline trains on all
50,000 training images. The test split is never used here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgepack import data as data_mod
from edgepack import runtime
from edgepack.data import balanced_subset
from edgepack.errors import EdgepackError
from edgepack.explain import kernels, layers, memory
from edgepack.export import export
from edgepack.export import summary as export_summary
from edgepack.export.core import CALIBRATION_SEED
from edgepack.export.formats import FORMATS
from edgepack.runtime.metadata import sidecar_path
from edgepack.runtime.preprocess import scale_pixels

VALIDATION_SEED = 1  # calibration uses seed 0 (edgepack.export.core.CALIBRATION_SEED)
DEFAULT_IMAGES = 300
FLOAT_TWIN = {"tflite-int8": "tflite-fp32", "onnx-int8": "onnx-fp32"}  # int8 format -> its float file
STEPS = "steps.json"


def validation_images(ds, n: int, calibration_images: int) -> tuple[np.ndarray, np.ndarray]:
    """n class-balanced uint8 training images (and labels) that calibration did not use."""
    used = set(balanced_subset(ds.y_train, calibration_images, CALIBRATION_SEED).tolist())
    pool = balanced_subset(ds.y_train, min(len(ds.y_train), n + calibration_images), VALIDATION_SEED)
    idx = np.array([i for i in pool if i not in used][:n])
    if len(idx) < n:
        raise EdgepackError(f"only {len(idx)} training images are left after calibration: use --images "
                            f"{max(1, len(idx))} or more data")
    return ds.x_train[idx], ds.y_train[idx]


def open_int8(path: str | os.PathLike):
    """The file loaded by edgepack.runtime; a float file is refused with the fix."""
    clf = runtime.load(path)
    if clf.format not in FLOAT_TWIN:
        raise EdgepackError(f"{path} is not int8 (format {clf.format}): explain compares an int8 file "
                            f"({', '.join(FLOAT_TWIN)}) with its float source; pass the int8 export")
    return clf


def source_run(path: Path, source: str | os.PathLike | None) -> Path | None:
    """The run folder the file was exported from: --source if a folder, else its export.json's."""
    if source is not None and Path(source).is_dir():
        return Path(source)
    summary = path.parent / "export.json"
    if source is None and summary.is_file():
        recorded = export_summary.read(path.parent).source
        return Path(recorded) if Path(recorded).is_dir() else None
    return None


def float_source(path: Path, fmt: str, source, data, scratch: Path) -> Path:
    """The float file of the same engine: --source FILE, the export folder's twin, or one exported
    from the run folder (--source DIR or the folder's export.json)."""
    twin = FORMATS[FLOAT_TWIN[fmt]]
    if source is not None and not Path(source).exists():
        raise EdgepackError(f"--source {source} not found: pass the float file ({twin.filename}) or the "
                            "run folder the int8 file was exported from")
    if source is not None and Path(source).is_file():
        if runtime.load(source).format != twin.name:
            raise EdgepackError(f"--source {source} is not a {twin.name} file: pass the float file of the "
                                f"same engine or the run folder")
        return Path(source)
    sibling = float_twin(path) if source is None else None
    if sibling is not None:
        return sibling
    run = source_run(path, source)
    if run is None:
        raise EdgepackError(f"no float source for {path.name}: pass --source {twin.filename} or the run "
                            "folder it was exported from")

    export(run, twin.name, scratch / "source", data_path=data, check_images=100)
    return scratch / "source" / twin.filename


def explain_file(path: str | os.PathLike, source=None, data=None, images: int = DEFAULT_IMAGES,
                 rss: bool = True, ds=None) -> dict:
    """The per-layer table (worst first) and memory figures of an int8 file, as one JSON-able dict."""
    path = Path(path)
    clf = open_int8(path)
    ds = ds if ds is not None else data_mod.load_data(data)
    calibration = int((clf.metadata.options or {}).get("calibration_images", 500))
    x, _ = validation_images(ds, images, calibration)
    with tempfile.TemporaryDirectory(prefix="edgepack-explain-") as tmp:
        reference = float_source(path, clf.format, source, data, Path(tmp))
        rows = layers.file_layers(path, reference, scale_pixels(x, clf.metadata.pixel_scaling))
        made = Path(reference).is_relative_to(tmp)
        source_name = f"{reference.name} exported from its run folder" if made else str(reference)
    return {"file": str(path), "format": clf.format, "float_source": source_name,
            "images": {"n": int(len(x)), "split": "train, not used for calibration", "seed": VALIDATION_SEED},
            "layers": [r.as_dict() for r in rows], "memory": memory.describe(path, rss=rss),
            **kernel_figures(path)}


def kernel_figures(path) -> dict:
    """{"kernels": the file's kernel facts, "why": them in words} (edgepack.explain.kernels)."""
    facts = kernels.file_facts(path)
    return {"kernels": facts.as_dict(), "why": kernels.sentences(facts)}


def render(result: dict, top: int = 10) -> str:
    """The table `edgepack explain` prints: worst layers first, then a summary and memory."""
    rows = result["layers"]
    lines = [f"{result['file']} ({result['format']}) against {result['float_source']}, "
             f"{result['images']['n']} validation images",
             f"{'layer':<10} {'op':<16} {'scale':>9} {'zp':>5} {'rmse/range':>10} {'snr_db':>7} "
             f"{'cosine':>8} {'layer_snr_db':>12}"]
    for r in rows[:top]:
        lines.append(f"{r['layer'][:10]:<10} {r['op'][:16]:<16} {r['scale']:>9.5f} {r['zero_point']:>5d} "
                     f"{r['rmse_over_range']:>10.5f} {r['snr_db']:>7.2f} {r['cosine']:>8.5f} "
                     f"{r['layer_snr_db']:>12.2f}")
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more rows (--top {len(rows)} shows all)")
    last = min(rows, key=lambda r: r["snr_db"])
    lines.append(f"{len(rows)} quantized activations; worst layer {rows[0]['layer']} "
                 f"(adds noise at {rows[0]['layer_snr_db']:.1f} dB SNR); lowest end-to-end SNR "
                 f"{last['snr_db']:.1f} dB at {last['layer']}")
    m = result["memory"]
    lines.append(f"memory: weights {m['weight_bytes']:,} B; peak activations {m['activation_bytes']:,} B "
                 f"(largest tensor {m['largest_activation_bytes']:,} B, all tensors "
                 f"{m['total_activation_bytes']:,} B; {m['method']})")
    if m.get("peak_rss_mb") is not None:
        lines.append(f"measured: runtime process peak RSS {m['peak_rss_mb']:.1f} MiB "
                     f"({m['rss_base_mb']:.1f} MiB without the model, +{m['rss_model_mb']:.1f} MiB)")
    lines += [f"kernels (from the file): {line}" for line in result.get("why") or []]
    return "\n".join(lines)


def copy_file(src: Path, folder: Path) -> Path:
    """Copy an exported file and its TFLite metadata sidecar (if any) into `folder`."""
    shutil.copy2(src, folder / src.name)
    if sidecar_path(src).is_file():
        shutil.copy2(sidecar_path(src), sidecar_path(folder / src.name))
    return folder / src.name


def float_twin(path: Path) -> Path | None:
    """The float file of the same source beside an int8 file: in its export folder, or in the sibling
    folder named after the float format (the pipeline exports each format to exports/<variant>/<format>/)."""
    clf = runtime.load(path)
    if clf.format not in FLOAT_TWIN:
        return None
    fmt = FORMATS[FLOAT_TWIN[clf.format]]
    places = (path.parent / fmt.filename, path.parent.parent / fmt.name / fmt.filename)
    twin = next((p for p in places if p.is_file()), None)
    if twin is None or runtime.load(twin).metadata.source_sha256 != clf.metadata.source_sha256:
        return None  # none, or a float file of another model
    return twin


def worst_layers(path: Path, ds, n: int = 3, images: int = 200) -> list[dict] | None:
    """The n worst rows of an int8 file against its float_twin (the report's figure); None when there
    is none."""
    clf = runtime.load(path)
    twin = float_twin(path)
    if twin is None:
        return None
    calibration = int((clf.metadata.options or {}).get("calibration_images", 500))
    if len(ds.y_train) - calibration < images:
        return None  # too few training images outside calibration (tiny data sets)
    x, _ = validation_images(ds, images, calibration)
    rows = layers.file_layers(path, twin, scale_pixels(x, clf.metadata.pixel_scaling))
    return [r.as_dict() for r in rows[:n]]
