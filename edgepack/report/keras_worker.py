"""Time Keras models with ONE TensorFlow thread, in a child process.

TensorFlow fixes its thread pools when it starts, so the process that evaluated the models (all
cores) cannot also time them on one thread: one child process times every Keras row's compiled
`tf.function` call (batch 1 and batch 64) with intra- and inter-op parallelism set to 1.

Run as `python -m edgepack.report.keras_worker JOB.json OUT.json` (compare.py does it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgepack.model import load_run_model
from edgepack.report.evaluate import keras_timing
from edgepack.rundir import load_source


def time_single_thread(run_paths: list[str], images: np.ndarray, opts, timeout: float) -> dict:
    """{run path: timing dict or {"error": ...}} for every run folder, measured in a child process."""
    with tempfile.TemporaryDirectory(prefix="edgepack-keras-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", images)
        job = {"runs": run_paths, "x": str(tmp / "x.npy"), "opts": {
            "runs": opts.runs, "warmup": opts.warmup, "throughput_runs": opts.throughput_runs,
            "predict_runs": opts.predict_runs}}
        (tmp / "job.json").write_text(json.dumps(job, allow_nan=False))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
               "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run([sys.executable, "-m", "edgepack.report.keras_worker", str(tmp / "job.json"),
                               str(tmp / "out.json")], env=env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0 or not (tmp / "out.json").is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"single-thread Keras timing exited {proc.returncode}: {tail[0][:300]}")
        return json.loads((tmp / "out.json").read_text())


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    opts = SimpleNamespace(**job["opts"])
    x = np.load(job["x"])
    results = {}
    for path in job["runs"]:
        try:
            # Timing only: "raw" pixels cost what scaled ones cost, and a model file needs no names here.
            model = load_run_model(load_source(path, preprocessing="raw", require_names=False))
            results[path] = keras_timing(model, x, opts, 1, with_predict=False)["tf_function"]
        except Exception as e:  # one bad model must not lose the others' timings
            results[path] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    Path(argv[1]).write_text(json.dumps(results, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
