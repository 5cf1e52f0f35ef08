"""`edgepack bench`: batch-1 latency of exported files through edgepack.runtime vs the raw engine.

For each file, in one process and on the same synthetic uint8 image:
  edgepack  `load(file).predict(image)`: input checks, scaling / int8 quantization, the engine
            call and dequantization to float32 probabilities (what an app pays);
  raw       the bare engine on a second copy of the file with the same options, fed the already
            prepared input: ONNX Runtime `session.run`, LiteRT `set_tensor` + `invoke` + `get_tensor`.
The two are timed in alternating rounds (the machine's speed drifts) with edgepack.timing.measure;
p50 and p90 are medians over the rounds. A file that fails becomes a row with its error.
The import time of edgepack.runtime is measured in fresh processes (median), which also check that
TensorFlow was not imported. Nothing here imports TensorFlow.

`edgepack bench --json` prints the result below (schema_version 1), which `edgepack compare
--device-results` reads back (edgepack.report.devices) to report a device's latencies next to its own:
    schema_version, kind ("edgepack-bench"), batch, threads, kernels, runs, warmup, rounds, input
    device      {cpu: edgepack.runtime.cpu.describe(), os, system, machine, python,
                 versions: {edgepack, numpy, onnxruntime, ai-edge-litert}}
    files       one row per file, kernel choice and thread count: {file, name, sha256 (of the file's
                bytes: how compare matches it), format, runtime, threads, kernels, status ("ok"/"error"),
                error, edgepack and raw: {p50_ms, p90_ms, low_ms, high_ms (min-max of the round
                medians), round_p50_ms, runs, rounds}, ratio_p50}
    import      the runtime's import time in fresh processes
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from edgepack import runtime
from edgepack.runtime import RUNTIMES, backends
from edgepack.runtime.cpu import describe
from edgepack.runtime.golden import sha256_file
from edgepack.timing import measure

SCHEMA_VERSION = 1  # of the --json document (read back by edgepack.report.devices)
KIND = "edgepack-bench"
VERSIONED = ("edgepack", "numpy", "onnxruntime", "ai-edge-litert")  # the device record's package versions

ROUNDS = 10  # alternating edgepack/raw rounds per file (the machine's speed drifts)
IMAGE_SEED = 0

# Run in a fresh interpreter: import time of edgepack.runtime, then (optionally) the first load + predict.
_IMPORT_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import edgepack.runtime
t1 = time.perf_counter()
out = {"import_s": t1 - t0}
if len(sys.argv) > 1:
    import numpy as np
    clf = edgepack.runtime.load(sys.argv[1])
    clf.predict(np.zeros((1, *clf.input_shape), np.uint8))
    out["first_predict_s"] = time.perf_counter() - t0
out["tensorflow_imported"] = any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
print(json.dumps(out))
"""


def raw_call(clf, x: np.ndarray) -> Callable[[], object]:
    """The bare engine call on prepared input `x`, on its own session/interpreter with `clf`'s options."""
    if isinstance(clf, backends.OnnxClassifier):
        import onnxruntime as ort

        session = ort.InferenceSession(str(clf.path), backends.session_options(clf.threads, clf.kernels),
                                       providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        return lambda: session.run(None, feed)
    interpreter = backends.new_interpreter(clf.path, clf.threads, clf.kernels)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if list(inp["shape"]) != list(x.shape):
        interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
        interpreter.allocate_tensors()
    in_index, out_index = inp["index"], out["index"]

    def call():
        interpreter.set_tensor(in_index, x)
        interpreter.invoke()
        return interpreter.get_tensor(out_index)

    return call


def bench_file(path: str | os.PathLike, runs: int = 500, warmup: int = 50, threads: int = 1,
               kernels: str = "default") -> dict:
    """One row: edgepack vs raw batch-1 latency of `path` (ms), or the error that stopped it."""
    row = {"file": str(path), "name": Path(path).name, "sha256": None, "format": None, "runtime": None,
           "threads": threads, "kernels": kernels, "status": "ok"}
    try:
        row["sha256"] = sha256_file(path)
        clf = runtime.load(path, threads=threads, kernels=kernels)
        row.update(format=clf.format, runtime=clf.runtime)
        image = np.random.default_rng(IMAGE_SEED).integers(0, 256, (1, *clf.input_shape), dtype=np.uint8)
        fns = {"edgepack": lambda: clf.predict(image), "raw": raw_call(clf, clf.prepare(image))}
        rounds: dict[str, list] = {k: [] for k in fns}
        per_round = max(1, runs // ROUNDS)
        for r in range(ROUNDS):
            for name in (("edgepack", "raw") if r % 2 == 0 else ("raw", "edgepack")):
                rounds[name].append(measure(fns[name], per_round, warmup if r == 0 else max(1, warmup // 5)))
    except Exception as e:  # a failed file is a row with its reason, not a crash
        row.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        return row
    for name, lats in rounds.items():
        medians = [lat.p50_ms for lat in lats]  # one per round: their min-max is the spread
        row[name] = {"p50_ms": float(np.median(medians)),
                     "p90_ms": float(np.median([lat.p90_ms for lat in lats])),
                     "low_ms": float(min(medians)), "high_ms": float(max(medians)), "round_p50_ms": medians,
                     "runs": per_round * ROUNDS, "rounds": ROUNDS}
    row["ratio_p50"] = row["edgepack"]["p50_ms"] / row["raw"]["p50_ms"]
    return row


def import_time(repeats: int = 5, model: str | os.PathLike | None = None) -> dict:
    """Seconds to `import edgepack.runtime` in fresh processes (median of `repeats`), and whether
    TensorFlow got imported; with `model`, also import + load + first predict of that file."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    samples = []
    for _ in range(repeats):
        args = [sys.executable, "-c", _IMPORT_PROBE] + ([str(model)] if model else [])
        try:
            done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": "importing edgepack.runtime took over 120 s"}
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            return {"status": "error", "error": lines[-1][:300]}
        try:
            samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            return {"status": "error", "error": f"unexpected probe output: {done.stdout[-200:]!r}"}
    out = {"status": "ok", "repeats": repeats,
           "import_s": float(np.median([s["import_s"] for s in samples])),
           "import_s_all": [round(s["import_s"], 4) for s in samples],
           "tensorflow_imported": any(s["tensorflow_imported"] for s in samples)}
    if model:
        first = [s["first_predict_s"] for s in samples]
        out.update(model=str(model), first_predict_s=float(np.median(first)))
    return out


def bench(paths: list[str | os.PathLike], runs: int = 500, warmup: int = 50, threads: int | list[int] = 1,
          import_repeats: int = 5, kernels: tuple[str, ...] = ("default",)) -> dict:
    """`edgepack bench`: a row per file, kernel choice and thread count, plus the runtime's import time.

    A kernel choice a file's engine does not offer (no-xnnpack for .onnx) is left out for that file.
    """
    thread_counts = [threads] if isinstance(threads, int) else list(threads)
    jobs = [(p, k, t) for p in paths for k in kernels for t in thread_counts
            if k in getattr(RUNTIMES.get(Path(p).suffix.lower()), "kernel_choices", kernels)]
    rows = []
    for i, (p, k, t) in enumerate(jobs, 1):  # progress on stderr: stdout may be the JSON document
        print(f"bench [{i}/{len(jobs)}] {Path(p).name} kernels {k}, {t} thread(s)", file=sys.stderr,
              flush=True)
        rows.append(bench_file(p, runs, warmup, t, k))
    first_ok = next((r["file"] for r in rows if r["status"] == "ok"), None)
    timed = max(1, runs // ROUNDS) * ROUNDS  # what bench_file really times per side
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "batch": 1, "threads": thread_counts,
            "kernels": list(kernels), "runs": timed, "warmup": warmup, "rounds": ROUNDS,
            "input": "synthetic uint8 image (seed 0)", "device": device(), "files": rows,
            "import": import_time(import_repeats, first_ok)}


def device() -> dict:
    """What ran the timings: CPU (model, ISA labels, int8 paths), OS, architecture and versions."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": describe(), "os": platform.platform(), "system": platform.system(),
            "machine": platform.machine(), "python": platform.python_version(), "versions": versions}


def render(result: dict) -> str:
    """The bench result as a text table."""
    cpu = result["device"]["cpu"]
    paths = cpu["int8_paths"]
    head = (f"batch 1, {result['runs']} timed runs after {result['warmup']} warm-up in {result['rounds']} "
            "alternating rounds; milliseconds (median over rounds)\n"
            f"CPU: {cpu['model']}; ISA: {', '.join(cpu['isa_flags']) or 'none detected'}"
            + (" (as CPUID shows it; /proc/cpuinfo differs: an emulated CPU?)" if cpu.get("flags_differ")
               else "") + "\n"
            f"int8 paths ({paths['isa']}): onnxruntime {paths['onnxruntime']['path']}; "
            f"litert {paths['litert']['path']} (kernels: default = XNNPACK on)")
    names = [Path(r["file"]).name for r in result["files"]]
    w = max([len("file")] + [len(n) for n in names])
    lines = [head, f"{'file':<{w}}  {'format':<15} {'runtime':<12} {'kernels':<10} {'thr':>3} "
                   f"{'edgepack p50':>12} {'p90':>7} {'raw p50':>8} {'p90':>7} {'ratio':>6}"]
    for name, r in zip(names, result["files"], strict=True):
        lead = (f"{name:<{w}}  {r['format'] or '-':<15} {r['runtime'] or '-':<12} {r['kernels']:<10} "
                f"{r['threads']:>3}")
        if r["status"] != "ok":
            lines.append(f"{lead} error: {r['error']}")
            continue
        e, raw = r["edgepack"], r["raw"]
        lines.append(f"{lead} {e['p50_ms']:>12.4f} {e['p90_ms']:>7.4f} {raw['p50_ms']:>8.4f} "
                     f"{raw['p90_ms']:>7.4f} {r['ratio_p50']:>6.3f}")
    imp = result["import"]
    if imp["status"] != "ok":
        lines.append(f"import edgepack.runtime: error: {imp['error']}")
    else:
        tf = "YES" if imp["tensorflow_imported"] else "no"
        lines.append(f"import edgepack.runtime (fresh process, median of {imp['repeats']}): "
                     f"{imp['import_s']:.3f} s; tensorflow imported: {tf}")
        if "first_predict_s" in imp:
            lines.append(f"import + load + first predict of {Path(imp['model']).name}: "
                         f"{imp['first_predict_s']:.3f} s")
    return "\n".join(lines)
