"""`edgepack compare`: every variant on the same test images, against the original and a control.

results.json schema (schema_version 1), in words; edgepack.report.rows declares every key with its type
(Results, ResultRow) and reads a results.json back (read_results). report.md, results.csv and
report.html render the same typed rows.
Accuracies are fractions in [0, 1]; changes are in percentage points ("pts"); sizes in bytes;
latencies in milliseconds; throughput in images per second. Unmeasured values are null.

    schema_version      1
    kind                "edgepack-compare"
    created             UTC time, ISO 8601
    wall_seconds        time the comparison took
    data                {source, sha256, num_test_images, limit_test (null = all 10,000, else subset size)}
    options             the CompareOptions used (runs, warmup, max_drop, fail_over, ...)
    environment         {cpu: {model, machine, isa_flags, int8_paths, logical_cores, usable_cores,
                         physical_cores}, (int8_paths: edgepack.runtime.cpu.int8_paths)
                         versions: {package: version}, platform, git_commit}
    baseline            row id of the reference row: the Keras run whose technique is "baseline" (or
                        the one given with --baseline), or null
    control             row id of the control given with --control (used for every row), or null
    controls            row ids of the Keras control runs (technique "finetune"; only --control's if given).
                        Without --control each compressed row is compared with the control that has its
                        fine-tuning recipe (same epochs and learning rate), else with the only control.
    recommended         row id of the recommended variant (needs max_drop), or null
    gate                {fail_over, failed: [row ids], passed} or null when no fail_over was asked
    imbalance           one line naming every row's weak classes and their recall, or null when none
    settings            what the caller (edgepack pipeline) recorded, e.g. its resolved settings; or null
    target              the device target's verdict (--target; null for host): {name, budget, runnable,
                        fitting, closest, none_fit, ...} (edgepack.report.targets documents every key)
    rows                one object per model, baseline first:
      id                "<variant>/<format>", e.g. "prune-0.8/tflite-int8", "baseline/keras"
      variant, technique  from the model's metadata
      format            "keras" for a run folder, else the export format ("tflite-int8", "onnx-fp32", ...)
      kind              "run" (Keras run folder) or "file" (exported file)
      path              what was evaluated (null for a model that failed before compare)
      status, error     "ok", "error", or "skipped" (not applicable: a QAT model's float formats);
                        error = "<stage>: <what went wrong or why skipped>" (null when ok)
      accuracy, precision_macro, recall_macro, f1_macro
      per_class_accuracy  {class name: share of that class's test images classified right}
      weak_classes      {class name: recall} of the classes edgepack.metrics flags as weak (recall 0 or
                        below 1/3 of the median class recall), {} when none
      confusion_matrix  rows = true class, columns = predicted class
      num_test_images
      accuracy_recorded the accuracy in the run folder's own metrics.json (Keras rows), else null
      accuracy_check    "equal", "mismatch" (then status is "error") or "skipped: <why>"
      agreement         share of test images whose top-1 equals the baseline Keras model's top-1
      delta_pts_vs_baseline  accuracy minus the baseline Keras model's, in points
      delta_pts_vs_control   for compressed variants: accuracy minus the matched control's accuracy in the
                        same format (the Keras control if that format of it was not given), in points
      control_ref       the row id that delta_pts_vs_control compares with
      finetune_recipe   {epochs, learning_rate} the model was fine-tuned with (run metadata; files: their
                        source run's), or null (e.g. the baseline)
      size_bytes, size_gzip_bytes   model file size, raw and gzip'ed (level 9)
      size_ratio_gzip, size_ratio_raw   baseline Keras model's size / this row's size ("x smaller")
      parameters        Conv/Dense kernel + bias values (TF-MOT wrapper variables not counted); files:
                        their source run's (matched by source_sha256), else null
      sparsity          share of exactly-zero weights in Conv/Dense kernels
      sparsity_source   "model" (Keras), "file" (read from the file), "source-run", or null
      source_sha256     sha256 of the Keras model a file (or compressed run) was made from
      model_sha256      sha256 of this model file
      latency           {method, threads_1, threads_all, predict_threads_all, error}; each timing is
                        {p50_ms, p90_ms, p99_ms, mean_ms, runs, warmup, threads, throughput_ips}:
                        batch-1 latency over `runs` calls after `warmup`, and images/s at batch 64.
                        Keras rows: threads_* time a compiled tf.function call (1 thread: measured in a
                        child process); predict_threads_all times model.predict (fewer runs: ~70 ms
                        each; the baseline only unless options.predict_all).
                        Files: edgepack.runtime predict on uint8 images (scaling included).
      speedup           baseline Keras tf.function p50 / this row's p50, 1 thread ("x faster"; all
                        cores when 1-thread figures are missing)
      memory_rss_delta_mb  resident memory growth (>= 0) from loading the model and one batch-1 call (psutil;
                        indicative only: allocators keep freed memory, libraries load once per process)
      recommended       true for the recommended row
      eval_seconds      time spent on this row
      reference_accuracy  int8 files (tflite-int8, onnx-int8): accuracy on the reference kernels (ONNX
                        Runtime without graph optimizations, LiteRT BUILTIN_REF): the file's own figure on
                        any CPU; else null
      kernel_gap_points reference_accuracy minus accuracy (this CPU's kernels), in points; else null
      kernel_path       the int8 kernel path this CPU runs the file with (edgepack.runtime.cpu), or null
      memory            every row: {weight_bytes, activation_bytes (peak of live activation tensors,
                        batch 1, from execution order and tensor lifetimes: the least an arena needs),
                        largest_activation_bytes, total_activation_bytes, peak_step, method,
                        peak_rss_mb, rss_base_mb, rss_model_mb (measured: a fresh runtime process with
                        and without the model; null for Keras rows, counted from their layers in
                        float32)} (edgepack.explain.memory)
      worst_layers      int8 files whose export folder has the float file: the 3 worst rows of
                        `edgepack explain` ({layer, tensor, op, scale, zero_point, rmse_over_range,
                        snr_db, cosine, layer_snr_db}) on training images calibration did not use; else null
      kernel_facts      quantized files (tflite-int8, tflite-dynamic, onnx-int8): what the file runs, read
                        from the file (edgepack.explain.kernels.KernelFacts: ORT's optimized graph's fused
                        and unfused Q/DQ nodes; TFLite's dynamic-range (hybrid) and full-integer ops and
                        ops outside XNNPACK): the same on every CPU; else null
      notes             sentences from measured facts: the kernel facts in words, kernels that lose
                        accuracy here, int8 not faster than fp32 here and why (the file's reasons first,
                        then the CPU's), what to ship instead
      confidence        (edgepack.report.stats) {rule, vs_baseline, vs_control, latency,
                        latency_vs_baseline_within_noise}; vs_* = {delta_pts, p_value (exact McNemar),
                        ci_pts [low, high] (95% paired bootstrap, 2000 seeded resamples), only_this_right,
                        only_ref_right (discordant images), within_noise (p >= 0.05)} or null (no
                        baseline / no control); latency = {p50_ms, low_ms, high_ms, rounds, threads}:
                        median and min-max of the medians of 5 consecutive slices of the timed runs
                        (threads_1, else threads_all); within noise = the two intervals overlap
      flips             (edgepack.report.flips; not for the baseline) {changed: images whose top-1 differs
                        from the baseline's, per_class_delta_pts {class: accuracy change in points},
                        pairs [{from, to, count}]: baseline class -> this row's class, most frequent first}
      flip_sheet        report-relative PNG of the 16 most confident flips (int8 rows and the recommended
                        row), or null
      host              the machine that evaluated and timed the row: {node, model, machine, isa_flags,
                        int8_paths} (edgepack.report.env.host), or null (failed before compare)
      target            --target other than host: the file on that target (edgepack.target.Figures: runs,
                        reason, ops, ram_bytes, flash_bytes (as stored), compressed_flash_bytes,
                        compressed_ram_bytes, compression, accuracy and agreement on the target's
                        kernels, num_images, seconds, fits, fits_as, verdict, over); null for host
    cpu_groups          the distinct CPUs (model + ISA labels) of the rows: [{label, model, isa_flags,
                        int8_paths, nodes}]; with more than one, latencies are labelled by group, speedup
                        is computed only against a baseline on the same CPU and the recommendation
                        ignores latency (edgepack.report.hosts)
    Latency timings also carry round_p50_ms: the medians of those 5 slices.
    device_results      latencies users measured on their own devices (--device-results, `edgepack bench
                        --json`), matched to rows by sha256, never ranked with the rows: schema in
                        edgepack.report.devices ([] when none given)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.errors import EdgepackError, require_toolchain
from edgepack.metrics import top1_agreement
from edgepack.report import devices, plots, render, targets
from edgepack.report import env as env_mod
from edgepack.report.derived import BASELINE, CONTROL, derive
from edgepack.report.evaluate import blank_row, evaluate_entry, is_quantized, reference_figures, time_entry
from edgepack.report.explain import Kept, explain
from edgepack.report.front import front
from edgepack.report.inputs import KERAS, Entry, expand, open_entry
from edgepack.report.keras_worker import SingleThread
from edgepack.report.options import CompareOptions
from edgepack.report.rows import SCHEMA_VERSION, DataInfo, ResultRow, Results, dump
from edgepack.runtime.cpu import usable_cores
from edgepack.target import get as get_target
from edgepack.tfkeras import keras

FULL_TEST = 10_000  # CIFAR-10's test set: fewer images is a subset, and the report says so


class GateFailed(EdgepackError):
    """--fail-over: a variant dropped more than allowed (the report is written before this is raised)."""

    def __init__(self, message: str, results: Results):
        super().__init__(message)
        self.results = results


def _pick(entries: list[Entry], given: str | os.PathLike | None, technique: str) -> Entry | None:
    """The reference entry: the one given, else the Keras run (then any file) with that technique."""
    if given is not None:
        key = Path(given).resolve()
        found = next((e for e in entries if e.path.resolve() == key), None)
        if found is None:
            raise EdgepackError(f"{given} is not a single model: pass a run folder or model file")
        return found
    for kind in ("run", "file"):
        found = [e for e in entries if e.kind == kind and e.technique == technique and not e.error]
        if found:
            return found[0]
    return None


def _with_references(inputs, baseline, control) -> list:
    paths = list(inputs)
    known = {Path(p).resolve() for p in paths}
    for ref in (baseline, control):
        if ref is not None and Path(ref).resolve() not in known:
            paths.insert(0, ref)
            known.add(Path(ref).resolve())
    return paths


def compare(inputs: list[str | os.PathLike], out: str | os.PathLike,
            data_path: str | os.PathLike | None = None, baseline: str | os.PathLike | None = None,
            control: str | os.PathLike | None = None,
            options: CompareOptions | None = None, force: bool = False, ds=None,
            failures: list[dict] | None = None, settings: dict | None = None,
            source_options: dict | None = None) -> Results:
    """Evaluate every input, write the report folder `out` (atomically) and return the results.

    Inputs: run folders, exported files, export folders and users' Keras model files (`source_options`:
    their class_names / preprocessing, edgepack.rundir.load_source). The test images are read at the
    first model's input size.
    `ds`: an already loaded edgepack.data.Cifar10 (then `data_path` and `limit_test` are not used).
    `failures`: models that could not be made upstream ({variant, format, stage, error} and optionally
    technique, path, and status "skipped" for models not applicable): each becomes a row with its
    status ("error" unless given). `settings`: recorded as results.settings (a
    `"quick": true` entry labels the report a smoke run).
    """
    require_toolchain("edgepack compare")
    options = options or CompareOptions()
    options.check()
    devices.read_all(options.device_results)  # a bad device file stops compare before any work
    given = {"RUN_OR_FILE": inputs, "--baseline": baseline, "--control": control, "--data": data_path}
    with rundir.claim_output(out, given, force):
        return _compare(inputs, out, data_path, baseline, control, options, force, ds, failures, settings,
                        source_options)


def _compare(inputs, out, data_path, baseline, control, options: CompareOptions, force: bool, ds,
             failures: list[dict] | None, settings: dict | None, source_options: dict | None) -> Results:
    for ref, flag in ((baseline, "--baseline"), (control, "--control")):
        if ref is not None and not Path(ref).exists():
            raise EdgepackError(f"{flag} {ref} does not exist: pass a run folder or an exported file")
    entries = expand(_with_references(inputs, baseline, control), source_options)
    device_docs = devices.read_all(options.device_results)  # matched by sha256 before any work
    devices.match(device_docs, [e.path for e in entries if e.kind == "file" and e.path.is_file()])
    base = _pick(entries, baseline, BASELINE)
    ctrl = _pick(entries, control, CONTROL) if control is not None else None
    started = time.time()
    if ds is None:
        ds = data_mod.load_data(data_path or _recorded_data([base, *entries]), limit_test=options.limit_test,
                                seed=options.seed, image_size=_image_size(entries))
    _names_from_data(entries, ds)
    print(f"compare: {len(entries)} models on {len(ds.y_test)} test images from {ds.source}", flush=True)
    if base is None:
        print("compare: no baseline (technique 'baseline' or --baseline): no changes, no agreement",
              flush=True)
    order = ([base] if base else []) + [e for e in entries if e is not base]
    _unique_ids(order)
    if any(e.kind == "run" for e in order):
        keras()  # import TensorFlow now, so it does not count in the first row's memory figure
    all_threads = usable_cores()
    host = env_mod.host()  # one process times every row: they share it (edgepack.report.hosts)
    target = get_target(options.target)
    with _single_thread_child(order, ds, options) as child:
        evaluated = _evaluate_all(order, ds, options, all_threads, started)
        if child is not None:
            child.wait_ready()  # idle from now on: it must not share the CPU with the timings
        rows, kept = _timed_rows(order, evaluated, base, ds, options, all_threads, host, target)
        if child is not None:
            _single_thread_keras(rows, order, ds, options, child)
    _fill_from_source_runs(rows)
    for row in _failure_rows(failures or []):
        if any(r.id == row.id for r in rows):
            row.id += "@failed"
        rows.append(row)
    n_test = int(len(ds.y_test))
    results = Results(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data=DataInfo(source=ds.source, sha256=ds.sha256, num_test_images=n_test,
                      limit_test=options.limit_test or (n_test if n_test < FULL_TEST else None)),
        options=options, environment=env_mod.environment(),
        baseline=rows[0].id if base else None,
        control=next((r.id for r, e in zip(rows[:len(order)], order, strict=True) if e is ctrl), None),
        controls=[r.id for r in rows if r.technique == CONTROL and r.kind == "run"
                  and (ctrl is None or r.path == str(ctrl.path))],
        settings=settings, rows=rows)
    targets.summarise(results, target, options.budget)
    derive(results)
    evaluated = {r.id: e for r, e in zip(rows[:len(order)], order, strict=True)}
    _front_references(results, evaluated, ds, all_threads, options)
    results.device_results = devices.section(device_docs, rows)  # apart from the ranked rows
    sheets = explain(results, kept, ds)
    results.wall_seconds = round(time.time() - started, 2)
    write_report(results, out, force, sheets)
    if results.imbalance:
        print(f"compare: warning: {results.imbalance}", flush=True)
    print(f"compare: wrote {out} in {results.wall_seconds:.0f} s", flush=True)
    gate = results.gate
    if gate and not gate.passed:
        limit = f"{gate.fail_over:g}"
        raise GateFailed(f"--fail-over {limit}: {', '.join(gate.failed)} dropped more than {limit} points "
                         f"below the baseline or failed (report in {out})", results)
    return results


def _evaluate_all(order: list[Entry], ds, options: CompareOptions, workers: int, started: float) -> list:
    """(row, probabilities) of every entry, in order, without timing: the exported files side by side on
    `workers` threads (the engines release the GIL) while this thread evaluates the Keras run folders
    (TensorFlow models load one at a time here); a line as each finishes."""
    out: list = [None] * len(order)
    done = 0

    def finished(i: int) -> None:
        nonlocal done
        done += 1
        row = out[i][0]
        status = "ok" if row.ok else f"ERROR {row.error}"
        print(f"[{done}/{len(order)}] {row.id}: accuracy {_fmt(row.accuracy)} {status} (elapsed "
              f"{time.time() - started:.0f} s)", flush=True)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="edgepack-evaluate") as pool:
        futures = {pool.submit(evaluate_entry, e, ds, options, workers): i
                   for i, e in enumerate(order) if e.kind != "run"}
        for i, e in enumerate(order):
            if e.kind == "run":
                out[i] = evaluate_entry(e, ds, options, workers)
                finished(i)
            for f in [f for f in futures if f.done()]:  # the files done meanwhile, each with its line
                out[futures[f]] = f.result()
                finished(futures.pop(f))
        for f in as_completed(list(futures)):
            out[futures[f]] = f.result()
            finished(futures.pop(f))
    return out


def _timed_rows(order: list[Entry], evaluated: list, base: Entry | None, ds, options: CompareOptions,
                all_threads: int, host, target) -> tuple[list[ResultRow], dict]:
    """Every row timed one at a time (nothing else runs), with its agreement with the baseline and its
    figures on the target; and the kept predictions of each row."""
    rows, base_pred, kept = [], None, {}
    if options.latency:
        print(f"compare: timing {len(order)} models one at a time", flush=True)
    for entry, (row, probs) in zip(order, evaluated, strict=True):
        time_entry(row, entry, ds, options, all_threads, is_baseline=entry is base)
        row.host = host
        kept[row.id] = Kept.of(probs)
        pred = None if probs is None else kept[row.id].pred
        if entry is base:
            base_pred = pred
        if pred is not None and base_pred is not None:
            row.agreement = top1_agreement(pred, base_pred)
        row.target = targets.row_figures(target, options.budget, entry, row, ds, pred, all_threads)
        rows.append(row)
    return rows, kept


NOT_ON_FRONT = ("exact reference not run: not on the Pareto front nor recommended (compare --exact-reference "
                "all runs every int8 file on the reference kernels)")


def _front_references(results: Results, entries: dict[str, Entry], ds, workers: int,
                      options: CompareOptions) -> None:
    """With exact_reference "front": the int8 files of the Pareto front and the recommended row on the
    engines' reference kernels (their accuracy on any CPU; "all" ran every one while evaluating). Neither
    the front nor the recommendation reads these figures, so measuring them afterwards changes no pick."""
    if options.exact_reference != "front":
        return
    wanted = {r.id for r in front(results)} | {results.recommended}
    for row in results.rows:
        entry = entries.get(row.id)
        if entry is None or entry.kind != "file" or not row.ok or not is_quantized(row.format) \
                or row.technique == CONTROL:
            continue
        if row.id not in wanted:
            row.notes.append(NOT_ON_FRONT)
            continue
        print(f"compare: {row.id} on the reference kernels (on the front)", flush=True)
        t0 = time.perf_counter()
        try:
            reference_figures(row, entry.path, ds, workers)
        except Exception as e:  # a row's figure, not the report: said in the row
            row.notes.append(f"exact reference failed: {type(e).__name__}: {str(e)[:200]}")
        row.eval_seconds = (row.eval_seconds or 0) + time.perf_counter() - t0


def _recorded_data(entries: list[Entry | None]) -> str | None:
    """Without --data: the data the first run folder (the baseline first) was made from, if it is still
    there, as compress and export do (Run.data_path); else None (edgepack.data's usual places)."""
    for e in entries:
        found = e.run.data_path() if e is not None and e.run is not None else None
        if found:
            return found
    return None


def _image_size(entries: list[Entry]) -> tuple[int, int] | None:
    """(height, width) of the first model that says its input shape: the size test images are read at."""
    for e in entries:
        shape = e.file_metadata.input_shape if e.file_metadata else e.metadata and e.metadata.input_shape
        if shape and len(shape) == 3:
            return int(shape[0]), int(shape[1])
    return None


def _names_from_data(entries: list[Entry], ds) -> None:
    """A user's model file given without --class-names takes the data's names (if it has that many)."""
    for e in entries:
        if e.run is not None and e.metadata.class_names is None:
            if e.metadata.num_outputs == len(ds.class_names):
                e.metadata = e.metadata.with_names(ds.class_names)
                e.run = dataclasses.replace(e.run, metadata=e.metadata)
            else:
                e.error = (f"{e.path} outputs {e.metadata.num_outputs} classes but the data has "
                           f"{len(ds.class_names)}: pass the data it was trained on or --class-names")


def _unique_ids(entries: list[Entry]) -> None:
    """Row ids are "<variant>/<format>"; a second model with the same id gets its file name appended."""
    seen: set[str] = set()
    for e in entries:
        if e.row_id in seen:
            e.id_suffix = f"@{e.path.name}"
        seen.add(e.row_id)


def _failure_rows(failures: list[dict]) -> list[ResultRow]:
    rows = []
    for f in failures:
        fmt = str(f.get("format") or KERAS)
        entry = Entry(Path(str(f.get("path") or "")), "run" if fmt == KERAS else "file", fmt,
                      str(f.get("variant") or "unknown"), str(f.get("technique") or "unknown"))
        row = blank_row(entry)
        row.status = f.get("status") or "error"
        row.error = f"{f.get('stage') or 'make'}: {f.get('error') or 'failed'}"
        row.path = str(f["path"]) if f.get("path") else None
        rows.append(row)
    return rows


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


@contextlib.contextmanager
def _single_thread_child(order: list[Entry], ds, options: CompareOptions):
    """The child process that will time the Keras rows on one thread (keras_worker.SingleThread),
    started now so that it imports TensorFlow and loads the models while the untimed work runs; None
    when there is nothing to time."""
    runs = [str(e.path) for e in order if e.kind == "run" and not e.error]
    if not (options.latency and options.keras_single_thread and runs):
        yield None
        return
    with SingleThread(runs, ds.x_test[:64], options) as child:
        yield child


def _single_thread_keras(rows: list[ResultRow], order: list[Entry], ds, options: CompareOptions,
                         child: SingleThread) -> None:
    targets = {str(e.path): r for r, e in zip(rows, order, strict=True)
               if e.kind == "run" and r.ok}
    if not targets:
        return
    print(f"compare: timing {len(targets)} Keras models on 1 thread in a child process", flush=True)
    try:
        got = child.result(timeout=120 + 60 * len(targets))
    except Exception as e:
        for r in targets.values():
            r.latency.error = f"1-thread timing: {type(e).__name__}: {str(e)[:300]}"
        return
    for path, row in targets.items():
        t = got.get(path) or {"error": "no result"}
        if "error" in t:
            row.latency.error = f"1-thread timing: {t['error']}"
        else:
            row.latency.threads_1 = t


def _fill_from_source_runs(rows: list[ResultRow]) -> None:
    """Files get their source run's parameter count and fine-tuning recipe (and sparsity, if unreadable
    from the file). The source run is the Keras row whose model sha256 is the file's source_sha256,
    else the Keras row of the same variant name."""
    keras_rows = [r for r in rows if r.format == KERAS and r.ok]
    by_sha = {r.model_sha256: r for r in keras_rows if r.model_sha256}
    by_variant = {r.variant: r for r in keras_rows}
    for r in rows:
        if r.format == KERAS:
            continue
        src = by_sha.get(r.source_sha256) or by_variant.get(r.variant)
        if src is None:
            continue
        r.parameters, r.finetune_recipe = src.parameters, src.finetune_recipe
        if r.sparsity is None and src.sparsity is not None:
            r.sparsity, r.sparsity_source = src.sparsity, "source-run"


def write_report(results: Results, out: str | os.PathLike, force: bool, files: dict[str, bytes] | None = None
                 ) -> None:
    """The report folder; `files`: more files to write in it (report-relative path -> bytes)."""
    with rundir.atomic_dir(out, force) as tmp:
        for name, data in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        rundir.write_json(tmp / "results.json", dump(results))
        render.write_csv(results, tmp / "results.csv")
        images = plots.write_plots(results, tmp)
        (tmp / "report.md").write_text(render.markdown(results, images), encoding="utf-8")
        (tmp / "report.html").write_text(render.html(results, tmp, images), encoding="utf-8")


__all__ = ["CompareOptions", "GateFailed", "compare", "SCHEMA_VERSION", "open_entry"]
