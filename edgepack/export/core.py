"""`export()`: convert a run folder's Keras model into checked, self-describing deployable files.

Output folder (written under a temporary name, renamed when every format is done):
    <format><suffix>        e.g. tflite-int8.tflite, onnx-fp32.onnx (ONNX: metadata in metadata_props;
                            TFLite: the standard TFLite metadata with labels and normalization)
    <file>.json             TFLite edgepack metadata sidecar (edgepack.runtime.metadata.FileMetadata)
    <file>.golden.npz       golden vectors for `edgepack verify` (edgepack.runtime.golden)
    export.json             edgepack.export.summary's record; per format: file, bytes, gzip_bytes,
                            options, checks, status, seconds, trials (formats that try several files,
                            e.g. onnx-int8's portable schemes: each one's options, verdict and figures,
                            in the order tried); a format that
                            failed (of several asked) is {"status": "error", "error": why, "trials"}
                            and its file is not written
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

import numpy as np

from edgepack import __version__, rundir, runtime
from edgepack import data as data_mod
from edgepack.errors import EdgepackError, require_toolchain
from edgepack.export.context import Context, is_qat_model
from edgepack.export.files import FAMILIES
from edgepack.export.formats import ALL, CALIBRATION, FORMATS, Format, for_source, options_for, resolve
from edgepack.export.summary import SCHEMA_VERSION, SUMMARY
from edgepack.export.summary import check as check_summary
from edgepack.metrics import top1_agreement
from edgepack.model import load_run_model, predict_proba, with_weights
from edgepack.runtime import golden
from edgepack.runtime import metadata as md
from edgepack.runtime.cpu import describe
from edgepack.runtime.metadata import FileMetadata
from edgepack.runtime.preprocess import scale_pixels
from edgepack.sources import source_and_data

CHECK_SEED = 1  # check images: class-balanced subset of the training images no calibration uses
CALIBRATION_SEED = 0  # calibration images: class-balanced subset of the training set


def export(source: str | os.PathLike, formats: list[str] | str, out: str | os.PathLike,
           options: dict | None = None, data_path: str | os.PathLike | None = None, force: bool = False,
           check_images: int = 1000, ds=None, source_options: dict | None = None) -> dict:
    """Export the model of run folder `source` to each of `formats` in folder `out`; returns export.json.

    `options` maps option names to values for every chosen format that accepts them (see FORMATS).
    Each file is checked (loads in its runtime; matches the source on `check_images` class-balanced
    training images none of the calibrations use: check_indices) before the folder is written. Of
    several formats, one that fails its conversion or check becomes an "error" entry (listed in the
    summary's "failed") and the others are kept; if every format fails, or a conversion fails for the
    machine's reason (OSError, MemoryError), EdgepackError (or that error) is raised and no `out` is
    left.
    `ds` (an edgepack.data.Dataset) skips loading the data again. `source` may also be a user's model
    file; `source_options` then gives its class_names / preprocessing (edgepack.sources).
    """
    names = resolve(formats)
    opts = options_for(names, options)
    if not isinstance(check_images, int) or check_images < 10:
        raise EdgepackError(f"check_images must be an integer >= 10, got {check_images!r}")
    require_toolchain("edgepack export")
    with rundir.claim_output(out, {"--model": source, "--data": data_path}, force):
        return _export(source, formats, names, opts, out, data_path, force, check_images, ds,
                       source_options)


def _export(source, formats, names: list[str], opts: dict, out, data_path, force: bool, check_images: int,
            ds, source_options: dict | None) -> dict:

    run, ds = source_and_data(source, data_path, ds=ds, **(source_options or {}))
    model = load_run_model(run)
    base_meta = source_metadata(run, ds, model)
    scaling = base_meta["pixel_scaling"]
    idx, apart = check_indices(ds.y_train, check_images, calibration_sizes(opts))
    x_check, y_check = scale_pixels(ds.x_train[idx], scaling), ds.y_train[idx]
    reference = predict_proba(model, x_check)

    @functools.lru_cache(maxsize=4)
    def calibration(n: int) -> np.ndarray:
        return scale_pixels(ds.x_train[data_mod.balanced_subset(ds.y_train, n, CALIBRATION_SEED)], scaling)

    qat = is_qat_model(model, base_meta["technique"])
    asked = [formats] if isinstance(formats, str) else list(formats)
    names, skipped = for_source(names, qat, explicit=ALL not in asked)
    summary = {
        "schema_version": SCHEMA_VERSION, "source": str(run.path), **{k: base_meta[k] for k in (
            "source_sha256", "technique", "variant")},
        "source_accuracy": run.metrics.accuracy if run.metrics else None, "qat_source": qat,
        "data_source": ds.source, "data_sha256": ds.sha256,
        # False: the data is not the one the source was trained on (other data given)
        "data_matches_source": ds.sha256 == run.metadata.data_sha256,
        "check": {"images": int(len(idx)), "seed": CHECK_SEED, "split": "train",
                  "apart_from_calibration": apart, "source_accuracy": _accuracy(reference, y_check)},
        "calibration": {"split": "train", "seed": CALIBRATION_SEED, "class_balanced": True},
        "formats": {}, "skipped": skipped, "failed": [],
        "all": ALL in asked,  # `all`: a failed format is listed, the command still succeeds (cli.export)
    }
    with rundir.atomic_dir(out, force) as tmp:
        scratch = tmp / ".scratch"
        scratch.mkdir()
        ctx = Context(model=model, options={}, calibration=calibration, qat=qat, scratch=scratch)
        for name in names:
            ctx.options = opts[name]
            try:
                entry = export_format(FORMATS[name], ctx, tmp, base_meta, x_check, y_check, reference)
            except EdgepackError as e:  # the format's own failure; OSError/MemoryError stop everything
                if len(names) == 1 or len(summary["failed"]) == len(names) - 1:
                    raise  # nothing would be kept: fail as a whole, leaving no folder
                entry = failed_entry(FORMATS[name], tmp, opts[name], e)
                summary["failed"].append(name)
            summary["formats"][name] = entry
        shutil.rmtree(scratch)
        summary["versions"] = rundir.package_versions()
        rundir.write_json(tmp / SUMMARY, check_summary(summary))  # edgepack.export.summary's record
    return summary


class FormatFailed(EdgepackError):
    """No file of the format passed its check: `trials` says what each one tried measured."""

    def __init__(self, message: str, trials: list[dict]):
        super().__init__(message)
        self.trials = trials


class CheckFailed(EdgepackError):
    """A converted file failed its check against the source (`checks` holds the figures)."""

    def __init__(self, message: str, checks: dict):
        super().__init__(message)
        self.checks = checks


def remove_file(fmt: Format, folder: Path) -> None:
    """A failed file's leftovers (the unchecked file and its sidecar)."""
    for leftover in (folder / fmt.filename, md.sidecar_path(folder / fmt.filename)):
        leftover.unlink(missing_ok=True)


def failed_entry(fmt: Format, folder: Path, options: dict, error: EdgepackError) -> dict:
    """export.json's entry for a format that failed; its unchecked file and sidecar are removed."""
    remove_file(fmt, folder)
    return {"file": None, "runtime": fmt.runtime, "options": dict(options), "status": "error",
            "error": str(error), "trials": getattr(error, "trials", None)}


TRIAL_FIGURES = ("accuracy", "source_accuracy", "drop_points", "top1_agreement", "refused_by")


def _trial(options: dict, asked: dict, error: EdgepackError | None, checks: dict | None) -> dict:
    """One tried file in export.json: the options that differ from the asked ones, verdict, figures."""
    changed = {k: v for k, v in options.items() if asked.get(k) != v}
    figures = {k: (checks or {}).get(k) for k in TRIAL_FIGURES}
    return {"options": changed, "passed": error is None, **figures,
            "error": None if error is None or checks else str(error)}


def calibration_sizes(opts: dict[str, dict]) -> list[int]:
    """The calibration set sizes of the default and the formats' options: every format of a source is
    then checked on the same images, whichever formats one export call makes."""
    asked = {int(o["calibration_images"]) for o in opts.values() if "calibration_images" in o}
    return sorted({CALIBRATION.default, *asked})


def check_indices(y_train: np.ndarray, n: int, calibrations: list[int]) -> tuple[np.ndarray, bool]:
    """Indices of the check images and whether they are apart from every calibration set: a seeded,
    class-balanced subset of the training images none of the `calibrations` (sizes) draws. Never test
    images: a check decides (onnx-int8's portable scheme is the first that passes), and the test set
    only reports. Data so small that calibration takes every training image is checked on them all."""
    drawn = [data_mod.balanced_subset(y_train, k, CALIBRATION_SEED) for k in calibrations]
    rest = np.setdiff1d(np.arange(len(y_train)), np.concatenate(drawn)) if drawn else np.arange(len(y_train))
    if len(rest) == 0:
        return data_mod.balanced_subset(y_train, n, CHECK_SEED), False
    return rest[data_mod.balanced_subset(y_train[rest], n, CHECK_SEED)], True


def export_format(fmt: Format, ctx: Context, folder: Path, base_meta: dict, x_check: np.ndarray,
                  y_check: np.ndarray, reference: np.ndarray) -> dict:
    """Make the format's file from each of its candidates (Format.candidates) in order, keeping the first
    that passes its check; if none does, FormatFailed names each one's figures and what could help."""
    asked = dict(ctx.options)
    options_list = fmt.candidates(asked, ctx)
    trials: list[dict] = []
    try:
        for options in options_list:
            ctx.options = options
            try:
                entry = export_one(fmt, ctx, folder, base_meta, x_check, y_check, reference, trials)
            except EdgepackError as e:  # its conversion or check failed: the next candidate may pass
                if len(options_list) == 1:
                    trial = _trial(options, asked, e, getattr(e, "checks", None))
                    raise FormatFailed(_with_help(str(e), fmt, ctx), [trial]) from None
                remove_file(fmt, folder)
                trials.append(_trial(options, asked, e, getattr(e, "checks", None)))
                continue
            if len(options_list) > 1:
                entry["trials"] = [*trials, _trial(options, asked, None, entry["checks"])]
            return entry
    finally:
        ctx.options = asked
    tried = "; ".join(f"{_label(t)}: {t['refused_by'] or t['error']}" for t in trials)
    raise FormatFailed(_with_help(f"{fmt.name}: none of {len(trials)} files passed its check on "
                                  f"{len(x_check)} check images ({tried}); the export was not written",
                                  fmt, ctx), trials)


def _label(trial: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in trial["options"].items()) or "as asked"


def _with_help(message: str, fmt: Format, ctx: Context) -> str:
    """The failure line ending with the options that could make the file pass (and QAT's own route)."""
    hints = [fmt.help_when_failed] if fmt.help_when_failed else []
    if ctx.qat and fmt.runtime == "onnx":
        hints.append("tflite-int8 (it keeps the QAT model's learned ranges)")
    return message + (f"; could help: {'; '.join(hints)}" if hints else "")


def source_metadata(run, ds, model) -> dict:
    """The fields every file of this source carries (format-specific fields are added per file).

    Class names and pixel scaling come from the run, the input shape from the model itself."""
    class_names = list(run.metadata.class_names or ds.class_names)
    if class_names != list(ds.class_names):
        raise EdgepackError(f"the data's class names differ from the model's ({run.path}): pass the --data "
                            "the model was trained on")
    return {
        "class_names": tuple(class_names),
        "input_shape": tuple(int(d) for d in model.input_shape[1:]),  # (height, width, channels)
        "pixel_scaling": dict(run.metadata.pixel_scaling),
        "source_sha256": _source_sha256(run),
        "technique": run.metadata.technique,
        "variant": run.metadata.variant,
        "edgepack_version": __version__,
    }


def export_one(fmt: Format, ctx: Context, folder: Path, base_meta: dict, x_check: np.ndarray,
               y_check: np.ndarray, reference: np.ndarray, tried: list[dict] | None = None) -> dict:
    """Convert, annotate and check one file of the format in `folder`; returns its export.json entry.
    `tried`: the candidates refused before it (recorded in an ONNX file's int8_scheme)."""
    t0 = time.perf_counter()
    path = folder / fmt.filename
    try:
        fmt.convert(ctx, path)
    except (EdgepackError, OSError, MemoryError):
        raise  # a full disk or a missing permission is the machine's problem, not the format's
    except Exception as e:  # converters raise many types; the user needs the format and the cause
        raise EdgepackError(f"{fmt.name}: conversion failed ({type(e).__name__}: {str(e)[:300]})") from None
    family = FAMILIES[fmt.runtime]
    structural = family.check(path)
    io = family.io(path)
    facts = family.describe(path, ctx.options, x_check)
    if facts.get("int8_scheme") and tried:  # why this scheme: the ones refused before it
        facts["int8_scheme"]["refused_before"] = [
            {"scheme": t["options"].get("scheme"), "refused_by": t["refused_by"] or t["error"]}
            for t in tried]
    meta = FileMetadata(**base_meta, format=fmt.name, input_dtype=io.input_dtype,
                        input_quantization=io.input_quantization, output_quantization=io.output_quantization,
                        options=dict(ctx.options), **facts)
    meta_file = family.attach(path, meta)
    checks = {**structural, **check_file(fmt, path, x_check, y_check, reference, ctx.options,
                                         rounded_reference(fmt, ctx, x_check))}
    if not checks["passed"]:
        raise CheckFailed(f"{fmt.name}: check failed on {checks['images']} check images: "
                          f"{checks['refused_by']}; the export was not written", checks)
    golden.write_for(path, x_check, y_check)  # <file>.golden.npz: `edgepack verify` on a device
    return {
        "file": path.name, "metadata_file": meta_file.name, "bytes": path.stat().st_size,
        "gzip_bytes": rundir.gzip_size(path),
        "runtime": fmt.runtime, "input_dtype": io.input_dtype, "output_dtype": io.output_dtype,
        "options": dict(ctx.options), "checks": checks, "status": "ok",
        "seconds": round(time.perf_counter() - t0, 2),
    }


def rounded_reference(fmt: Format, ctx: Context, x: np.ndarray) -> np.ndarray | None:
    """For a format that rounds the weights (Check.weights): the source model's probabilities with its
    weights rounded so (every weight, biases too, as the converter stores them); else None."""
    dtype = fmt.check.weights
    if dtype is None:
        return None
    key = ("rounded_reference", dtype)  # one export call checks every file on the same images
    if key not in ctx.cache:
        rounded = with_weights(ctx.model, [w.astype(dtype).astype(w.dtype) for w in ctx.model.get_weights()])
        ctx.cache[key] = predict_proba(rounded, x)
    return ctx.cache[key]


def check_file(fmt: Format, path: Path, x: np.ndarray, labels: np.ndarray, reference: np.ndarray,
               options: dict, rounded: np.ndarray | None = None) -> dict:
    """The file run the way apps run it (edgepack.runtime, default kernels) against its source model
    (`rounded`: the source with its weights rounded as the format stores them, Check.weights).

    Edgepack.runtime parses the metadata as written, checks it against the file's tensors, then
    scales, quantizes and batches exactly as it will in an app. Quantized files are judged on the
    engines' reference kernels (the file's own arithmetic, whatever the CPU); this CPU's kernels are
    measured beside them and a gap of more than KERNEL_GAP_POINTS is said in words.
    """
    probs = runtime.load(path).predict(x)
    local = measure(probs, reference, labels, fmt.name)
    if not fmt.check.quantized:
        judged = local if rounded is None else measure(probs, rounded, labels, fmt.name)
        ok = judged["max_abs_diff"] <= fmt.check.threshold
        against = f" against the source with {fmt.check.weights} weights" if rounded is not None else ""
        out = {**judged, "kernels": "default", "rule": fmt.check.describe(), "passed": bool(ok),
               "refused_by": None if ok else f"max_abs_diff {judged['max_abs_diff']:.6g} > "
                                             f"{fmt.check.threshold:g}{against}"}
        if rounded is not None:  # what rounding the weights costs, against the source itself
            out["vs_source"] = local
        return out
    exact = measure(runtime.load(path, kernels="reference").predict(x), reference, labels, fmt.name)
    refused = []
    if exact["drop_points"] > options["max_drop"]:
        refused.append(f"accuracy fell {exact['drop_points']:.2f} points ({exact['source_accuracy']:.2%} -> "
                       f"{exact['accuracy']:.2%}), allowed {options['max_drop']:g} (option max_drop)")
    if exact["top1_agreement"] < options["min_agreement"]:
        refused.append(f"top-1 agreement {exact['top1_agreement']:.4f} < {options['min_agreement']:g} "
                       "(option min_agreement)")
    out = {**exact, "kernels": "reference", "rule": fmt.check.describe(options), "passed": not refused,
           "refused_by": "; ".join(refused) or None, "local": local,
           "kernel_path": describe()["int8_paths"][FAMILIES[fmt.runtime].engine]["path"]}
    out["kernel_gap_points"] = round(100 * (exact["accuracy"] - local["accuracy"]), 4)
    out["kernel_note"] = kernel_note(out["kernel_gap_points"], not refused)
    return out


KERNEL_GAP_POINTS = 0.5  # this CPU's kernels vs the reference: a larger gap is said in words


def kernel_note(gap_points: float, file_passed: bool) -> str | None:
    """Words for a row whose local kernels differ from the exact reference by more than the gap."""
    if abs(gap_points) <= KERNEL_GAP_POINTS:
        return None
    side = "lose" if gap_points > 0 else "gain"
    verdict = ("the file itself is fine (its exact reference passes the check)" if file_passed
               else "the file itself fails the check too")
    return (f"this CPU's int8 kernels {side} {abs(gap_points):.2f} points against the file's exact "
            f"reference; {verdict}")


def measure(probs: np.ndarray, reference: np.ndarray, labels: np.ndarray, name: str) -> dict:
    """The file's outputs against the source model's on the same labelled images."""
    if probs.shape != reference.shape:
        raise EdgepackError(f"{name}: output shape {probs.shape} differs from the source's "
                            f"{reference.shape}")
    accuracy, source = _accuracy(probs, labels), _accuracy(reference, labels)
    return {"images": int(len(probs)), "max_abs_diff": float(np.max(np.abs(probs - reference))),
            "top1_agreement": top1_agreement(probs.argmax(axis=1), reference.argmax(axis=1)),
            "accuracy": accuracy, "source_accuracy": source,
            "drop_points": round(100 * (source - accuracy), 4)}


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels))


def _source_sha256(run) -> str:
    """sha256 of the model file (recorded by the run folder, which load_run checked)."""

    return run.metadata.model_sha256 or rundir.sha256_file(run.model_path)
