"""Evaluate one row: accuracy and friends on the test set, size, sparsity, memory; then time it.

Two steps, so that the first can run for many rows side by side and the second alone:
`evaluate_entry` (no timing) and `time_entry` (the row's in-process memory growth and latency).
Keras run folders are evaluated with `predict_proba` (as training wrote metrics.json) and timed as a
compiled `tf.function` call and, separately, as `model.predict`. Exported files are evaluated and
timed through `edgepack.runtime` (what apps embed): predictions in batches, latency at batch 1.
Every failure is caught per stage and recorded in the row (`status`, `error`), never raised.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgepack import runtime
from edgepack.compress.schedule import phase_of
from edgepack.data import test_set_sha256
from edgepack.explain import core, memory
from edgepack.export.core import kernel_note
from edgepack.export.files import FAMILIES
from edgepack.export.formats import INTEGER_FORMATS
from edgepack.metrics import classification_metrics
from edgepack.model import MODEL_FILE, load_run_model, predict_proba, save_model
from edgepack.report.derived import CONTROL
from edgepack.report.inputs import Entry
from edgepack.report.notes import FP32_TWIN
from edgepack.report.rows import ResultRow
from edgepack.report.stats import LATENCY_ROUNDS
from edgepack.report.weights import file_sparsity, keras_parameters, keras_sparsity, sizes
from edgepack.rundir import sha256_file
from edgepack.runmeta import MODEL_FILE_KIND, RunMetadata
from edgepack.runtime.cpu import describe
from edgepack.runtime.golden import golden_path
from edgepack.runtime.preprocess import scale_pixels
from edgepack.timing import measure

THROUGHPUT_BATCH = 64  # images per call when measuring throughput


def blank_row(entry: Entry) -> ResultRow:
    row = ResultRow(id=entry.row_id, variant=entry.variant, technique=entry.technique, format=entry.format,
                    kind=entry.kind, path=str(entry.path))
    if entry.error:
        row.status, row.error = entry.status, f"{entry.stage}: {entry.error}"
    return row


def fail(row: ResultRow, stage: str, exc: BaseException) -> None:
    row.status = "error"
    row.error = f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def weights_only_sizes(entry: Entry, model) -> tuple[int, int]:
    """The model file's sizes as edgepack saves models (weights only, no optimizer state): a user's
    file saved with its optimizer would otherwise look ~3x bigger than the runs made from it."""
    if entry.metadata.kind != MODEL_FILE_KIND:
        return sizes(entry.run.model_path)  # run folders are saved that way already

    with tempfile.TemporaryDirectory(prefix="edgepack-size-") as tmp:
        save_model(model, Path(tmp) / MODEL_FILE)
        return sizes(Path(tmp) / MODEL_FILE)


def rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        return None


def fill_metrics(row: ResultRow, y_true: np.ndarray, probs: np.ndarray, class_names) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.shape != (len(y_true), len(class_names)):
        raise ValueError(f"predictions have shape {probs.shape}, expected {(len(y_true), len(class_names))}")
    pred = probs.argmax(axis=1)
    m = classification_metrics(y_true, pred, class_names)
    row.accuracy, row.precision_macro = m["accuracy"], m["precision_macro"]
    row.recall_macro, row.f1_macro = m["recall_macro"], m["f1_macro"]
    row.confusion_matrix, row.num_test_images = m["confusion_matrix"], m["num_test_images"]
    row.per_class_accuracy = {k: v["accuracy"] for k, v in m["per_class"].items()}
    row.weak_classes = m["weak_classes"]
    return pred


def timing(fn1, fn64, opts, threads: int | str, runs: int | None = None, warmup: int | None = None) -> dict:
    """Batch-1 latency distribution and batch-64 throughput (images/s, from the median call)."""
    n = runs or opts.runs
    lat = measure(fn1, runs=n, warmup=opts.warmup if warmup is None else warmup,
                  rounds=min(LATENCY_ROUNDS, n)).as_dict()
    lat["threads"] = threads
    lat["throughput_ips"] = None
    if fn64 is not None:
        t = measure(fn64, runs=opts.throughput_runs, warmup=2)
        lat["throughput_ips"] = THROUGHPUT_BATCH / (t.p50_ms / 1e3)
    return lat


# --- Keras run folders

def check_recorded(row: ResultRow, entry: Entry, ds, seed: int) -> None:
    """The accuracy must equal the run's own metrics.json when both used the same test images."""
    rec = entry.run.metrics.accuracy if entry.run.metrics else None
    row.accuracy_recorded = rec
    recorded_set = entry.metadata.test_images_sha256
    if recorded_set is not None:  # the exact test images the run's metrics.json was computed on
        same = recorded_set == test_set_sha256(ds)
    else:
        config = entry.metadata.config or {}
        other_subset = config.get("limit_test") is not None and config.get("seed", seed) != seed
        same = (rec is not None and entry.run.metrics.num_test_images == len(ds.y_test) and not other_subset
                and entry.metadata.data_sha256 in (None, ds.sha256))
    if rec is None or not same:
        row.accuracy_check = "skipped: the run was evaluated on other test images"
        return
    n = len(ds.y_test)
    if round(rec * n) == round(row.accuracy * n):
        row.accuracy_check = "equal"
    else:
        row.accuracy_check = "mismatch"
        row.status = "error"
        row.error = (f"accuracy {row.accuracy:.4f} differs from metrics.json {rec:.4f}: "
                     "the model file changed or loads differently")


def finetune_recipe(meta: RunMetadata) -> dict | None:
    """(epochs, learning rate) of a compress run's fine-tuning, from its metadata; None if not fine-tuned."""
    ft = meta.finetune if meta.kind == "compress" else None
    if not isinstance(ft, dict) or "epochs" not in ft or "learning_rate" not in ft:
        return None
    recipe = {"epochs": int(ft["epochs"]), "learning_rate": float(ft["learning_rate"])}
    if ft.get("schedule"):  # every phase from the trained model on: what a matched control must share
        recipe["schedule"] = [list(phase_of(p)) for p in ft["schedule"]]
    return recipe


def keras_timing(model, x_uint8: np.ndarray, opts, threads, with_predict: bool,
                 scaling: dict | None = None) -> dict:
    """tf.function (and optionally model.predict) timings of a Keras model at the current TF threads."""
    import tensorflow as tf

    x1 = tf.constant(scale_pixels(x_uint8[:1], scaling))
    x64 = tf.constant(scale_pixels(x_uint8[:THROUGHPUT_BATCH], scaling))
    fn = tf.function(lambda x: model(x, training=False))
    fn(x1)
    fn(x64)  # trace both shapes before timing
    out = {"tf_function": timing(lambda: fn(x1).numpy(), lambda: fn(x64).numpy(), opts, threads)}
    if with_predict:
        x1np = x1.numpy()
        out["predict"] = timing(lambda: model.predict(x1np, verbose=0), None, opts, threads,
                                runs=min(opts.runs, opts.predict_runs), warmup=min(opts.warmup, 3))
    return out


def evaluate_run(entry: Entry, ds, opts) -> tuple[ResultRow, np.ndarray | None]:
    row = blank_row(entry)
    if not row.ok:
        return row, None
    t0 = time.perf_counter()
    meta = entry.metadata
    row.finetune_recipe = finetune_recipe(meta)
    row.model_sha256, row.source_sha256 = meta.model_sha256, meta.source_sha256
    try:
        model = load_run_model(entry.run)
        row.size_bytes, row.size_gzip_bytes = weights_only_sizes(entry, model)
        row.parameters = keras_parameters(model)
        row.sparsity, row.sparsity_source = keras_sparsity(model), "model"
        probs = predict_proba(model, scale_pixels(ds.x_test, meta.pixel_scaling))  # the run's own scaling
        fill_metrics(row, ds.y_test, probs, ds.class_names)

        row.memory = {**memory.keras_memory(model).as_dict(),  # the runtime-process RSS is for exported files
                         "peak_rss_mb": None, "rss_base_mb": None, "rss_model_mb": None}
    except Exception as e:
        fail(row, "evaluate", e)
        return row, None
    check_recorded(row, entry, ds, opts.seed)
    row.eval_seconds = time.perf_counter() - t0
    return row, probs


def time_run(row: ResultRow, entry: Entry, ds, opts, all_threads: int, is_baseline: bool = False) -> None:
    """The memory a Keras model adds to this process (loading it and one call) and its latency."""
    scaling = entry.metadata.pixel_scaling
    try:
        rss0 = rss_mb()
        model = load_run_model(entry.run)
        model(scale_pixels(ds.x_test[:1], scaling), training=False)
        rss1 = rss_mb()
    except Exception as e:
        fail(row, "evaluate", e)
        return
    row.memory_rss_delta_mb = None if rss0 is None or rss1 is None else max(0.0, rss1 - rss0)
    if opts.latency:
        row.latency.method = "keras tf.function (batch 1); model.predict labelled predict_threads_all"
        try:
            t = keras_timing(model, ds.x_test, opts, all_threads, scaling=scaling,
                             with_predict=is_baseline or opts.predict_all)
            row.latency.threads_all = t["tf_function"]
            row.latency.predict_threads_all = t.get("predict")
        except Exception as e:
            row.latency.error = f"{type(e).__name__}: {str(e)[:300]}"


# --- exported files

def evaluate_file(entry: Entry, ds, opts, all_threads: int) -> tuple[ResultRow, np.ndarray | None]:
    row = blank_row(entry)
    if not row.ok:
        return row, None
    t0 = time.perf_counter()
    row.source_sha256 = entry.file_metadata.source_sha256
    try:
        row.model_sha256 = sha256_file(entry.path)
        row.size_bytes, row.size_gzip_bytes = sizes(entry.path)
        sparsity = file_sparsity(entry.path)
        if sparsity is not None:
            row.sparsity, row.sparsity_source = sparsity, "file"
        probs = runtime.load(entry.path, threads=all_threads).predict(ds.x_test)  # in bounded chunks
        fill_metrics(row, ds.y_test, probs, ds.class_names)
        # A control is never shipped: the exact-reference pass (~2 ms an image on LiteRT's reference
        # kernels) and the worst layers are measured for the files that may be; with exact_reference
        # "front", for the front's files only, once it is known (edgepack.report.compare).
        shipped = entry.technique != CONTROL
        if is_quantized(entry.format) and shipped and opts.exact_reference == "all":
            reference_figures(row, entry.path, ds, all_threads)
        explain_figures(row, entry, ds if shipped else None)
        if not golden_path(entry.path).is_file():
            row.notes.append(NO_GOLDEN)
    except Exception as e:
        fail(row, "evaluate", e)
        return row, None
    row.eval_seconds = time.perf_counter() - t0
    return row, probs


def time_file(row: ResultRow, entry: Entry, ds, opts, all_threads: int) -> None:
    """The memory a file adds to this process (loading it and one call) and its latency, through
    edgepack.runtime on every core and on 1 thread."""
    try:
        rss0 = rss_mb()
        clf = runtime.load(entry.path, threads=all_threads)
        clf.predict(ds.x_test[:1])
        rss1 = rss_mb()
    except Exception as e:
        fail(row, "evaluate", e)
        return
    row.memory_rss_delta_mb = None if rss0 is None or rss1 is None else max(0.0, rss1 - rss0)
    if opts.latency:
        row.latency.method = "edgepack.runtime predict (uint8 in, probabilities out)"
        x1, x64 = ds.x_test[:1], ds.x_test[:THROUGHPUT_BATCH]
        try:
            row.latency.threads_all = timing(lambda: clf.predict(x1), lambda: clf.predict(x64),
                                                   opts, all_threads)
            clf1 = runtime.load(entry.path, threads=1)
            row.latency.threads_1 = timing(lambda: clf1.predict(x1), lambda: clf1.predict(x64),
                                                 opts, 1)
        except Exception as e:
            row.latency.error = f"{type(e).__name__}: {str(e)[:300]}"


NO_GOLDEN = ("no golden file beside it (exported before edgepack wrote golden vectors): re-export it with "
             "this edgepack so that `edgepack verify` can check a deployment")




def is_quantized(fmt: str | None) -> bool:
    return fmt in INTEGER_FORMATS


def explain_figures(row: ResultRow, entry: Entry, ds=None) -> None:
    """Memory (edgepack.explain.memory); for quantized files the kernel facts read from the file (their
    sentences go to the notes) and, for int8 files, the 3 worst layers (validation images)."""
    row.memory = memory.describe(entry.path)
    if entry.format in FP32_TWIN:
        got = core.kernel_figures(entry.path)
        row.kernel_facts = got["kernels"]
        row.notes += got["why"]
    if is_quantized(entry.format) and ds is not None:
        row.worst_layers = core.worst_layers(Path(entry.path), ds)


def reference_predict(path: Path, x: np.ndarray, workers: int) -> np.ndarray:
    """Probabilities on the engine's reference kernels, split over `workers` threads (LiteRT's reference
    kernels are single-threaded and slow, ~4 ms an image here; the engines release the GIL)."""
    parts = np.array_split(np.arange(len(x)), max(1, workers))
    clfs = [runtime.load(path, kernels="reference") for _ in parts]
    with ThreadPoolExecutor(len(parts)) as pool:
        outs = list(pool.map(lambda i: clfs[i].predict(x[parts[i]]), range(len(parts))))
    return np.concatenate(outs)


def reference_figures(row: ResultRow, path: Path, ds, workers: int) -> None:
    """An int8 file's accuracy on the engine's reference kernels (CPU-independent) beside this CPU's."""
    probs = reference_predict(path, ds.x_test, workers)
    row.reference_accuracy = float(np.mean(probs.argmax(axis=1) == ds.y_test))
    row.kernel_gap_points = round(100 * (row.reference_accuracy - row.accuracy), 4)
    family = FAMILIES["onnx" if path.suffix == ".onnx" else "tflite"]
    row.kernel_path = describe()["int8_paths"][family.engine]["path"]
    note = kernel_note(row.kernel_gap_points, file_passed=True)
    if note:
        row.notes.append(note.split(";")[0] + " on these test images")


def evaluate_entry(entry: Entry, ds, opts, all_threads: int) -> tuple[ResultRow, np.ndarray | None]:
    """The row without its timing, and its probabilities on ds.x_test (None when it failed). Rows of
    exported files may be evaluated side by side (threads): the engines release the GIL."""
    if entry.kind == "run":
        return evaluate_run(entry, ds, opts)
    return evaluate_file(entry, ds, opts, all_threads)


def time_entry(row: ResultRow, entry: Entry, ds, opts, all_threads: int, is_baseline: bool = False) -> None:
    """The row's in-process memory growth and latency: one row at a time, nothing else running."""
    if not row.ok:
        return
    t0 = time.perf_counter()
    if entry.kind == "run":
        time_run(row, entry, ds, opts, all_threads, is_baseline)
    else:
        time_file(row, entry, ds, opts, all_threads)
    row.eval_seconds = (row.eval_seconds or 0) + time.perf_counter() - t0
