"""The `browser` target: an exported .onnx file classifying images in a web page with onnxruntime-web.

`write_folder(model.onnx, DIR)` writes a self-contained static folder:
    <model>.onnx                 the file as exported (its edgepack metadata inside)
    index.html, classify.js      the page: reads the metadata from the .onnx itself (class names, input
                                 shape, pixel scaling, int8 scale/zero point), scales pixels exactly as
                                 edgepack.runtime does and runs the WASM backend
    ort.wasm.min.mjs, ort-wasm-simd-threaded.mjs/.wasm   onnxruntime-web's WASM build (pinned version)
    config.json                  the model's file name and the onnxruntime-web version
onnxruntime-web comes from `npm ci` of the pinned package.json/package-lock.json in browser_page/
(`make browser-deps` puts it in the user cache; EDGEPACK_ORT_WEB or `ort_web=` names another place).

`measure(DIR, images, labels)` serves the folder on 127.0.0.1 and drives headless Chromium: accuracy
and top-1 agreement with native ONNX Runtime for the same file, and batch-1 latency (WASM, 1 thread
and every core), one row per thread count.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepack import rundir, runtime, timing
from edgepack.bench import raw_call
from edgepack.export import export
from edgepack.export.core import SUMMARY
from edgepack.runtime import metadata as md
from edgepack.target import chromium
from edgepack.target.chromium import BrowserError
from edgepack.target.figures import Figures, unrunnable

NAME = "browser"
ORT_WEB_VERSION = "1.31.1"  # pinned in browser_page/package.json and its lock file
PAGE = Path(__file__).with_name("browser_page")
PAGE_FILES = ("index.html", "classify.js")
DIST_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CONFIG = "config.json"
ORT_WEB_ENV = "EDGEPACK_ORT_WEB"  # a folder where `npm ci` installed browser_page/package.json
INSTALL_HINT = "run `make browser-deps` (npm ci of edgepack/target/browser_page/package.json)"
ALL_CORES = 0  # threads=0: every core the browser reports (navigator.hardwareConcurrency)


def default_deps_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgepack" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def ort_web_dist(where: str | os.PathLike | None = None) -> Path:
    """onnxruntime-web's dist folder of the pinned version (BrowserError naming the install command)."""
    root = Path(where or os.environ.get(ORT_WEB_ENV) or default_deps_dir())
    package = root / "node_modules" / "onnxruntime-web"
    try:
        version = json.loads((package / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        version = None
    if version != ORT_WEB_VERSION or not all((package / "dist" / f).is_file() for f in DIST_FILES):
        found = f"version {version} found" if version else "not found"
        raise BrowserError(f"onnxruntime-web {ORT_WEB_VERSION} {found} in {root}: {INSTALL_HINT}, or set "
                           f"{ORT_WEB_ENV} to a folder where it was installed")
    return package / "dist"


def _metadata(model: Path) -> md.FileMetadata:
    if model.suffix.lower() != ".onnx":
        raise BrowserError(f"{model} is not an .onnx file: the browser target runs ONNX files "
                           "(export onnx-fp32 or onnx-int8)")
    if not model.is_file():
        raise BrowserError(f"{model} does not exist: give an .onnx file written by edgepack export")
    try:
        return md.read(model)
    except md.MetadataError as e:
        raise BrowserError(str(e)) from None
    except Exception as e:  # onnxruntime's own errors for a corrupt or non-ONNX file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BrowserError(f"{model} is not a loadable ONNX file ({first}): re-export it") from None


def runs(path: Path) -> str | None:
    """None if the browser target runs the file (an .onnx file with edgepack metadata), else why not."""
    try:
        _metadata(Path(path))
    except BrowserError as e:
        return str(e)
    return None


def write_folder(model: str | os.PathLike, out: str | os.PathLike, force: bool = False,
                 ort_web: str | os.PathLike | None = None) -> Path:
    """Write the browser folder of exported file `model` at `out` (atomically); returns `out`."""
    model = Path(model)
    meta = _metadata(model)
    dist = ort_web_dist(ort_web)
    out = rundir.check_output_path(out, {"--model": model})
    with rundir.atomic_dir(out, force) as tmp:
        _fill(tmp, model, meta, dist)
    return out


def _fill(folder: Path, model: Path, meta: md.FileMetadata, dist: Path) -> None:
    shutil.copy2(model, folder / model.name)
    for name in PAGE_FILES:
        shutil.copy2(PAGE / name, folder / name)
    for name in DIST_FILES:
        shutil.copy2(dist / name, folder / name)
    rundir.write_json(folder / CONFIG, {"model": model.name, "format": meta.format,
                                        "onnxruntime_web": ORT_WEB_VERSION})


def export_folders(source: str | os.PathLike, formats: Sequence[str] | None, out: str | os.PathLike,
                   force: bool = False, ort_web: str | os.PathLike | None = None,
                   **export_args) -> tuple[list[Path], list[str]]:
    """Browser folders at `out`: of an exported .onnx file (`formats` unused), or of a run folder exported
    to each ONNX format of `formats` (default onnx-fp32) by edgepack.export (`export_args`), one
    sub-folder per format next to the export's export.json. Returns the folders written and the formats
    that failed their export check (not written)."""
    source = Path(source)
    if source.suffix.lower() == ".onnx":
        if formats:
            raise BrowserError(f"--format does not apply to an exported file ({source.name}): leave it out")
        return [write_folder(source, out, force, ort_web)], []
    formats = list(formats or ["onnx-fp32"])
    bad = [f for f in formats if not f.startswith("onnx-")]
    if bad:
        raise BrowserError(f"the browser target runs ONNX files: {', '.join(bad)} is not an onnx-* format "
                           "(use onnx-fp32 or onnx-int8)")
    dist = ort_web_dist(ort_web)  # before the (slow) export
    rundir.check_new_output(rundir.check_output_path(out, {"--model": source}), force)

    with tempfile.TemporaryDirectory(prefix=".edgepack-browser-") as scratch:
        summary = export(source, formats, Path(scratch) / "files", **export_args)
        files = {name: Path(scratch) / "files" / f["file"] for name, f in summary["formats"].items()
                 if f["status"] == "ok"}
        with rundir.atomic_dir(out, force) as tmp:
            for name, path in files.items():
                (tmp / name).mkdir()
                _fill(tmp / name, path, _metadata(path), dist)
            shutil.copy2(Path(scratch) / "files" / SUMMARY, tmp / SUMMARY)
    return [Path(out) / name for name in files], list(summary["failed"])


def read_folder(folder: str | os.PathLike) -> tuple[Path, dict]:
    """A browser folder's model file and config, checked (one-line BrowserError naming what is missing)."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise BrowserError(f"{folder} is not a browser folder (no {CONFIG}): write one with "
                           "`edgepack export --target browser`")
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        model = folder / config["model"]
    except (ValueError, KeyError, TypeError):
        raise BrowserError(f"{folder / CONFIG} is not a browser folder's config: re-export the "
                           "folder") from None
    if not model.is_file():
        raise BrowserError(f"{folder} lacks its model {config['model']}: copy the .onnx file back or "
                           "re-export the folder")
    missing = [f for f in (*PAGE_FILES, *DIST_FILES) if not (folder / f).is_file()]
    if missing:
        raise BrowserError(f"{folder} lacks {', '.join(missing)}: re-export the folder")
    _metadata(model)
    return model, config


@dataclass(frozen=True)
class BrowserRow:
    """One exported file in one browser at one thread count."""

    browser: str  # e.g. "Chromium 156.0.8078.114" (headless)
    engine: str  # e.g. "onnxruntime-web 1.31.1"
    backend: str  # "wasm" (SIMD build)
    threads: int  # WASM threads the session ran on
    folder: str  # the browser folder measured
    file: str  # the .onnx file's name in it
    format: str  # its export format, e.g. "onnx-int8"
    num_images: int  # images classified in the page
    accuracy: float  # top-1 accuracy in the browser
    native_accuracy: float  # top-1 accuracy of native ONNX Runtime (edgepack.runtime) on the same images
    agreement: float  # share of images whose top-1 equals native ONNX Runtime's
    max_abs_diff: float  # largest probability difference from native ONNX Runtime
    latency_p50_ms: float  # batch-1 session.run in the page, median over `runs`
    latency_p90_ms: float
    native_p50_ms: float  # native ONNX Runtime, 1 thread, batch-1 session.run, median (same machine)
    native_p90_ms: float  # (the machine's load shows in both p90s alike)
    runs: int  # timed calls (after warm-up)
    isolated: bool  # the page was cross-origin isolated (SharedArrayBuffer: threads possible)
    seconds: float  # wall time of this row's page (load, classify, time)

    def as_dict(self) -> dict:
        return asdict(self)


def native(model: Path, images: np.ndarray, runs: int, warmup: int) -> tuple[np.ndarray, timing.Latency]:
    """Native ONNX Runtime through edgepack.runtime (the app's path, 1 thread): probabilities of
    `images` and the latency of batch-1 engine calls on the first image (like the page's timing)."""
    clf = runtime.load(model, threads=1)
    return clf.predict(images), timing.measure(raw_call(clf, clf.prepare(images[:1])), runs, warmup)


def measure(folders: str | os.PathLike | Sequence[str | os.PathLike], images: np.ndarray, labels: np.ndarray,
            threads: Sequence[int] = (1, ALL_CORES), runs: int = 200, warmup: int = 20,
            executable: str | os.PathLike | None = None,
            progress: Callable[[str], None] = print) -> list[BrowserRow]:
    """Classify `images` (uint8 RGB, NHWC) in each folder's page at each thread count and time batch 1
    there, in one headless Chromium; one row per folder and thread count."""
    folders = [folders] if isinstance(folders, str | os.PathLike) else list(folders)
    models = [read_folder(f)[0] for f in folders]  # every folder checked before Chromium starts
    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels)
    rows = []
    with chromium.chromium(executable) as browser:
        for folder, model in zip(folders, models, strict=True):
            reference, native_latency = native(model, images, runs, warmup)
            with chromium.serve(Path(folder)) as url:
                for n in threads:
                    rows.append(_row(browser, url, n, model, images, labels, reference, native_latency, runs,
                                     warmup))
                    progress(f"browser: {model.name} on {rows[-1].threads} thread(s) "
                             f"(isolated: {rows[-1].isolated}) in {rows[-1].seconds:.1f} s")
    return rows


def _row(browser, url: str, threads: int, model: Path, images, labels, reference: np.ndarray,
         native_latency: timing.Latency, runs: int, warmup: int) -> BrowserRow:
    t0 = time.perf_counter()
    page = chromium.Page(browser, url, threads)
    probs = page.predict(images)
    ms = page.time(images[0], runs, warmup)
    page.close()
    top1, ref_top1 = probs.argmax(axis=1), reference.argmax(axis=1)
    return BrowserRow(
        browser=f"Chromium {browser.version}", engine=f"onnxruntime-web {page.info['engine']}",
        backend="wasm", threads=int(page.info["threads"]), folder=str(model.parent), file=model.name,
        format=page.info["format"],
        num_images=len(images), accuracy=float(np.mean(top1 == labels)),
        native_accuracy=float(np.mean(ref_top1 == labels)), agreement=float(np.mean(top1 == ref_top1)),
        max_abs_diff=float(np.abs(probs - reference).max()), latency_p50_ms=float(np.median(ms)),
        latency_p90_ms=float(np.percentile(ms, 90)), native_p50_ms=float(native_latency.p50_ms),
        native_p90_ms=float(native_latency.p90_ms), runs=runs,
        isolated=bool(page.info["isolated"]), seconds=round(time.perf_counter() - t0, 2))


def ready() -> None:
    """Chromium, Playwright and the pinned onnxruntime-web are all here (one-line BrowserError if not)."""
    chromium.find_chromium()
    chromium.require_playwright()
    ort_web_dist()


def check(path: Path, x: np.ndarray, y: np.ndarray, row_pred: np.ndarray | None, workers: int = 1,
          progress: Callable[[str], None] = print) -> Figures:
    """The registry's check of one exported file: accuracy on `x` in the page (1 WASM thread) and
    top-1 agreement with the row's own runtime (`row_pred`); latency is `measure`'s (not in Figures)."""
    path = Path(path)
    t0 = time.perf_counter()
    reason = runs(path)
    if reason:
        return unrunnable(NAME, reason)
    with tempfile.TemporaryDirectory(prefix=".edgepack-browser-") as scratch:
        folder = write_folder(path, Path(scratch) / "page")
        progress(f"browser: {path.name} on {len(x)} images in headless Chromium")
        with chromium.serve(folder) as url, chromium.chromium() as browser:
            page = chromium.Page(browser, url, 1)
            pred = page.predict(x).argmax(axis=1)
    return Figures(NAME, runs=True, flash_bytes=path.stat().st_size, accuracy=float(np.mean(pred == y)),
                   agreement=None if row_pred is None else float(np.mean(pred == row_pred)),
                   num_images=int(len(y)), seconds=round(time.perf_counter() - t0, 2))


def render(rows: list[BrowserRow]) -> str:
    """The rows as a text table."""
    if not rows:
        return "no rows"
    lines = [f"{rows[0].browser} (headless), {rows[0].engine}, backend wasm; batch-1 latency in ms "
             f"(median and p90 of {rows[0].runs} runs; native = ONNX Runtime in Python, 1 thread); "
             "agreement = same top-1 as native ONNX Runtime",
             f"{'folder/file':<36} {'format':<10} {'thr':>3} {'images':>6} {'accuracy':>8} {'native':>8} "
             f"{'agree':>7} {'max diff':>9} {'p50 ms':>8} {'p90 ms':>8} {'native p50':>10} {'p90':>7}"]
    for r in rows:
        name = f"{Path(r.folder).name}/{r.file}"
        lines.append(f"{name:<36} {r.format:<10} {r.threads:>3} {r.num_images:>6} {r.accuracy:>8.2%} "
                     f"{r.native_accuracy:>8.2%} {r.agreement:>7.2%} {r.max_abs_diff:>9.2g} "
                     f"{r.latency_p50_ms:>8.3f} {r.latency_p90_ms:>8.3f} {r.native_p50_ms:>10.3f} "
                     f"{r.native_p90_ms:>7.3f}")
    return "\n".join(lines)
