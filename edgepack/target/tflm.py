"""The `tflm` target: which files TensorFlow Lite Micro runs, and each one's checks on TFLM itself.

A file runs when it is a fully integer .tflite (int8 weights and activations, int8 or uint8 input and
output) and TFLM's interpreter prepares and invokes it. For such a file `check` measures, with the
real interpreter (edgepack.runtime.tflm): the tensor arena TFLM's allocator used (bytes of RAM), the
flash it takes as stored and after TFLM's look-up-table weight compression (where that applies),
and its accuracy on every test image on TFLM's kernels, with top-1 agreement against the row's own
runtime (LiteRT) for the same file. TFLM takes ~7-13 ms an image here: the images are split over a
pool of processes.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from edgepack import runtime
from edgepack.runtime import tflm
from edgepack.target.figures import Figures, unrunnable
from edgepack.target.tflm_lut import lut_or_reason

NAME = "tflm"
INTEGER = ("INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL")  # tensor types of a fully integer graph
IO_TYPES = ("INT8", "UINT8")  # what the target takes at the model's input and output
CHUNK = 1000  # images per pool task (~10 s of TFLM work: progress stays visible)
ONNX_HINT = "export tflite-int8"


def ready() -> None:
    """The tflite-micro wheel is installed (EdgepackError naming the extra otherwise)."""
    tflm.require()


def runs(path: Path) -> str | None:
    """None if TFLM runs the file as a fully integer model, else one line naming what it lacks."""
    path = Path(path)
    if path.suffix.lower() != ".tflite":
        return f"a {path.suffix or 'suffix-less'} file: TFLM runs .tflite flatbuffers ({ONNX_HINT})"
    reason = integer_reason(tflm.graph(path))
    return reason or tflm.refusal(path)


def memory(path: Path) -> tuple[int, int]:
    """(tensor arena bytes from TFLM's allocator, file bytes as stored) of a file TFLM runs."""
    raw = Path(path).read_bytes()
    return tflm.arena_bytes(raw), len(raw)


def integer_reason(graph: list[tflm.OpFacts]) -> str | None:
    """Why a graph is not fully integer (hybrid ops first: they are what a dynamic-range file has)."""
    hybrid = [o.op for o in graph if any(t == "FLOAT32" and not c for t, c in o.inputs)
              and any(t in ("INT8", "UINT8") and c for t, c in o.inputs)]
    if hybrid:
        return (f"dynamic-range (hybrid) ops {', '.join(dict.fromkeys(hybrid))} take float activations "
                f"with int8 weights: TFLM has no hybrid kernels ({ONNX_HINT})")
    floating = [o.op for o in graph if any(t not in INTEGER for t, _ in o.inputs)
                or any(t not in INTEGER for t in o.outputs)]
    if floating:
        return (f"float ops {', '.join(dict.fromkeys(floating))}: the tflm target takes fully integer "
                f"int8 files ({ONNX_HINT})")
    if graph and (graph[0].inputs[0][0] not in IO_TYPES or graph[-1].outputs[0] not in IO_TYPES):
        return (f"input {graph[0].inputs[0][0]} / output {graph[-1].outputs[0]}: the target takes int8 "
                "or uint8")
    return None


def _predict_chunk(path: str, images: np.ndarray) -> np.ndarray:
    """One pool task: probabilities of `images` on TFLM (a fresh interpreter in this process)."""
    return runtime.load(path, kernels="tflm").predict(images)


def predict(path: Path, images: np.ndarray, workers: int = 1,
            progress: Callable[[str], None] = print) -> np.ndarray:
    """Probabilities on TFLM's kernels for every image, over `workers` processes (in this process
    when one worker or one chunk); `progress` gets a line after each chunk."""
    parts = [(s, images[s:s + CHUNK]) for s in range(0, len(images), CHUNK)]
    if workers <= 1 or len(parts) <= 1:
        clf = runtime.load(path, kernels="tflm")
        return tflm.predict_many(clf, images, lambda d, n: progress(f"tflm: {path.name} {d}/{n} images"),
                                 every=CHUNK)
    done, pieces = 0, {}
    # spawn: a fresh interpreter per process, nothing of the parent's TensorFlow threads inherited
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_predict_chunk, str(path), x): s for s, x in parts}
        for f in as_completed(futures):
            pieces[futures[f]] = f.result()
            done += len(pieces[futures[f]])
            progress(f"tflm: {path.name} {done}/{len(images)} images ({workers} processes)")
    return np.concatenate([pieces[s] for s, _ in parts])


def compressed(raw: bytes) -> tuple[bytes | None, dict]:
    """The file after TFLM look-up-table weight compression (edgepack.target.tflm_lut) and what was
    compressed; (None, why) where it does not apply (weights not clustered)."""
    result, why = lut_or_reason(raw)
    if result is None:
        return None, {"applies": False, "why": why}
    return result.model, {"applies": True, "tensors": len(result.tensors),
                          "index_bitwidth": sorted(set(result.bits.values()))}


def check(path: Path, x: np.ndarray, y: np.ndarray, row_pred: np.ndarray | None, workers: int = 1,
          progress: Callable[[str], None] = print) -> Figures:
    """Every TFLM figure of one file (see the module docstring); budgets are applied by the caller."""
    path = Path(path)
    t0 = time.perf_counter()
    reason = runs(path)
    ops = tflm.ops(path) if path.suffix.lower() == ".tflite" else []
    if reason:
        return unrunnable(NAME, reason, ops)
    ram, flash = memory(path)
    packed, how = compressed(path.read_bytes())
    probs = predict(path, x, workers, progress)
    pred = probs.argmax(axis=1)
    return Figures(
        NAME, runs=True, ops=ops, ram_bytes=ram, flash_bytes=flash,
        compressed_flash_bytes=None if packed is None else len(packed),
        compressed_ram_bytes=None if packed is None else tflm.arena_bytes(packed), compression=how,
        accuracy=float(np.mean(pred == y)),
        agreement=None if row_pred is None else float(np.mean(pred == row_pred)),
        num_images=int(len(y)), seconds=round(time.perf_counter() - t0, 2))
