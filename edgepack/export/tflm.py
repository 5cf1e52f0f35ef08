"""`export_tflm()`: a run folder -> a folder to drop into a TensorFlow Lite Micro project (`--target tflm`).

It reuses the tflite-int8 export (converted, checked against the source on training images no
calibration used, TFLite metadata), refuses a file the tflm target does not run (not fully integer, or
an operator TFLM lacks: edgepack.target.tflm.runs), then, on TFLM itself (edgepack.runtime.tflm):

    model.tflite            the int8 file, with TFLM look-up-table weights when the model is clustered
                            and that makes it smaller (edgepack.target.tflm_lut); runs in TFLM only then
    model.tflite.json       its edgepack metadata (runtime.load(..., kernels="tflm") reads it)
    model.tflite.golden.npz golden vectors whose expected outputs are TFLM's (`edgepack verify
                            model.tflite --kernels tflm`)
    model_data.cc / .h      the file as a 16-byte aligned C array, the arena size, input scale and
                            zero point, class names and one quantized sample image (edgepack.target.tflm_c)
    main.cc                 registers exactly the file's operators and runs the sample once
    tflm.json               what was measured: sizes, arena, operators, look-up tables, TFLM checks
    export.json             the tflite-int8 export's own summary (checks against the source model)
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import numpy as np

from edgepack import rundir
from edgepack.errors import EdgepackError
from edgepack.export.core import SUMMARY, calibration_sizes, check_indices, export
from edgepack.runtime import golden, tflm
from edgepack.runtime.metadata import FileMetadata, sidecar_path
from edgepack.runtime.preprocess import scale_pixels
from edgepack.sources import source_and_data
from edgepack.target import get, tflm_c
from edgepack.target import tflm as target
from edgepack.target.tflm_lut import lut_or_reason

FORMAT = "tflite-int8"  # the export format the TFLM target builds on
MODEL_FILE = "model.tflite"
SUMMARY_FILE = "tflm.json"
# kTensorArenaSize = measured arena x (1 + ARENA_MARGIN), rounded up to 16 bytes. The measurement is
# TFLM's RecordingMicroAllocator on the host build (reference kernels, 64-bit pointers); optimized
# kernels such as CMSIS-NN ask for scratch buffers the reference kernels do not, so a device build
# may need more (on a 32-bit MCU its pointer-sized structures are smaller).
ARENA_MARGIN = 0.25
TFLM_CHECK_IMAGES = 200  # check images the LUT file must reproduce exactly on TFLM (~13 ms each)


def integer_options(options: dict | None) -> dict:
    """The tflite-int8 options, refusing (before any work) those that keep float tensors."""
    options = dict(options or {})
    if str(options.get("keep_float") or "").strip():
        raise EdgepackError("--target tflm needs a fully-integer file: drop --keep-float / keep_float "
                            "(TFLM's int8 kernels run the whole model)")
    if options.get("io") == "float":
        raise EdgepackError("--target tflm needs a fully-integer file: --option io=float adds float "
                            "input/output; use io=uint8 (default) or io=int8")
    return options


def require_runs(path: Path) -> None:
    """EdgepackError (one line) unless the tflm target runs `path` as a fully integer file."""
    reason = target.runs(path)
    if reason:
        raise EdgepackError(f"{path.name} cannot run on TFLM: {reason}")


def export_tflm(source: str | os.PathLike, out: str | os.PathLike, options: dict | None = None,
                data_path: str | os.PathLike | None = None, force: bool = False, check_images: int = 1000,
                ds=None, source_options: dict | None = None, lut: bool = True) -> dict:
    """Write the TFLM deployment folder `out` for `source` (see the module doc); returns tflm.json.

    `options` are tflite-int8's (`keep_float` and `io=float` are refused); `lut=False` keeps the
    plain int8 weights even for a clustered model.
    """
    opts = integer_options(options)
    get("tflm").ready()  # the tflm extra, checked before any work
    with rundir.claim_output(out, {"--model": source, "--data": data_path}, force):
        _, ds = source_and_data(source, data_path, ds=ds, **(source_options or {}))
        with rundir.atomic_dir(out, force) as tmp:
            work = tmp / ".int8"
            summary = export(source, FORMAT, work, options=opts, data_path=data_path,
                             check_images=check_images, ds=ds, source_options=source_options)
            int8_path = work / f"{FORMAT}.tflite"
            require_runs(int8_path)
            asked = summary["formats"][FORMAT]["options"]
            idx, _ = check_indices(ds.y_train, summary["check"]["images"], calibration_sizes({FORMAT: asked}))
            record = _deploy(tmp, int8_path, summary, ds.x_train[idx], ds.y_train[idx], lut)
            shutil.move(str(work / SUMMARY), str(tmp / SUMMARY))
            shutil.rmtree(work)
            rundir.write_json(tmp / SUMMARY_FILE, record)
    return record


def _compressed(int8: bytes, lut: bool) -> tuple[bytes, dict]:
    """The bytes to deploy and the look-up-table record (applied, sizes, tensors, or why not)."""
    if not lut:
        return int8, {"applied": False, "reason": "not asked (--no-lut)"}
    result, why = lut_or_reason(int8)
    if result is None:  # not clustered: the int8 file is the deployment
        return int8, {"applied": False, "reason": why}
    return result.model, {"applied": True, **result.summary()}


def _deploy(folder: Path, int8_path: Path, summary: dict, pixels: np.ndarray, labels: np.ndarray,
            lut: bool) -> dict:
    """Write model.tflite (+ metadata, golden vectors) and the C++ sources into `folder`."""
    int8 = int8_path.read_bytes()
    model, lut_record = _compressed(int8, lut)
    meta = FileMetadata.from_json(sidecar_path(int8_path).read_text(encoding="utf-8"), FORMAT)
    meta = FileMetadata(**{**vars(meta), "runs_in": ("tflite_micro",) if lut_record["applied"] else (
        "ai_edge_litert", "tflite_micro"), "options": {**meta.options, "target": "tflm",
                                                       "tflm_lut": lut_record["applied"]}})
    path = folder / MODEL_FILE
    path.write_bytes(model)
    sidecar_path(path).write_text(meta.to_json() + "\n", encoding="utf-8")
    check = _tflm_check(int8_path, path, pixels, labels, lut_record["applied"])
    golden.write_for(path, scale_pixels(pixels, meta.pixel_scaling), labels, kernels="tflm")
    arena = {"int8_measured_bytes": tflm.arena_bytes(int8_path), "measured_bytes": tflm.arena_bytes(path),
             "margin": ARENA_MARGIN}
    arena["kTensorArenaSize"] = 16 * math.ceil(arena["measured_bytes"] * (1 + ARENA_MARGIN) / 16)
    ops = _write_sources(folder, path, meta, arena)
    return {
        "schema_version": 1, "target": "tflm", "source": summary["source"], "variant": meta.variant,
        "file": MODEL_FILE, "sha256": hashlib.sha256(model).hexdigest(),
        "bytes": {"int8": len(int8), "deployed": len(model)}, "lut": lut_record, "ops": ops, "arena": arena,
        "input": {"dtype": meta.input_dtype, "shape": list(meta.input_shape), **meta.input_quantization},
        "class_names": list(meta.class_names), "tflm_check": check,
        "int8_export": {k: summary["formats"][FORMAT][k] for k in ("bytes", "checks")},
    }


def _tflm_check(int8_path: Path, path: Path, pixels: np.ndarray, labels: np.ndarray, lut: bool) -> dict:
    """Both files on TFLM: a look-up-table file must give exactly the int8 file's outputs."""
    n = min(TFLM_CHECK_IMAGES, len(pixels))
    want = tflm.TflmClassifier(int8_path).predict(pixels[:n])
    got = tflm.TflmClassifier(path).predict(pixels[:n]) if lut else want
    same = bool(np.array_equal(want, got))
    if not same:
        raise EdgepackError(f"the look-up-table file's TFLM outputs differ from the int8 file's on {n} "
                            "check images: export with --no-lut")
    return {"images": n, "accuracy": float(np.mean(got.argmax(axis=1) == labels[:n])),
            "int8_accuracy": float(np.mean(want.argmax(axis=1) == labels[:n])), "identical_to_int8": same}


def _write_sources(folder: Path, path: Path, meta: FileMetadata, arena: dict) -> list[str]:
    """model_data.h/.cc and main.cc for the deployed file; returns its operators."""
    g = golden.read_golden(golden.golden_path(path))
    clf = tflm.TflmClassifier(path)
    d = tflm_c.Deployment(
        model=path.read_bytes(), ops=tuple(tflm.ops(path)), arena_bytes=arena["kTensorArenaSize"],
        arena_note=f"TFLM's allocator measured {arena['measured_bytes']:,} on the host build (reference "
                   f"kernels), +{ARENA_MARGIN:.0%} for optimized kernels' scratch buffers",
        input_shape=tuple(meta.input_shape), input_dtype=meta.input_dtype,
        input_scale=float(meta.input_quantization["scale"]),
        input_zero_point=int(meta.input_quantization["zero_point"]), class_names=tuple(meta.class_names),
        sample_input=clf.prepare(g["images"][:1]).tobytes(), sample_class=int(g["expected"][0].argmax()),
        source=str(meta.variant))
    for name, text in tflm_c.write_sources(d).items():
        (folder / name).write_text(text, encoding="utf-8")
    return list(d.ops)
