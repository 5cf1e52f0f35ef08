"""Time Keras models with ONE TensorFlow thread, in a child process.

TensorFlow fixes its thread pools when it starts, so the process that evaluated the models (all
cores) cannot also time them on one thread: one child process times every Keras row's compiled
`tf.function` call (batch 1 and batch 64) with intra- and inter-op parallelism set to 1. It starts
early (`SingleThread`: importing TensorFlow and loading the models while the comparison's other
untimed work runs) and times only when told to, when nothing else runs.

Run as `python -m edgepack.report.keras_worker JOB.json OUT.json` (compare.py does it); it times when
a line arrives on its stdin, and stops untimed if stdin closes first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgepack.model import load_run_model
from edgepack.report.evaluate import keras_timing
from edgepack.rundir import load_source

GO = "time\n"  # what the parent writes when the child may time
READY = "loaded"  # what the child prints when its models are loaded (then it only waits)


class SingleThread:
    """The child process that times `run_paths` on one thread; `result()` lets it time and returns
    {run path: timing dict or {"error": ...}}. A context manager: leaving it stops the child."""

    def __init__(self, run_paths: list[str], images: np.ndarray, opts):
        self.tmp = Path(tempfile.mkdtemp(prefix="edgepack-keras-"))
        np.save(self.tmp / "x.npy", images)
        job = {"runs": run_paths, "x": str(self.tmp / "x.npy"), "opts": {
            "runs": opts.runs, "warmup": opts.warmup, "throughput_runs": opts.throughput_runs,
            "predict_runs": opts.predict_runs}}
        (self.tmp / "job.json").write_text(json.dumps(job, allow_nan=False))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
               "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(self.tmp / "stderr.txt", "w") as err:  # a file: a full pipe would stall the child
            self.proc = subprocess.Popen([sys.executable, "-m", "edgepack.report.keras_worker",
                                          str(self.tmp / "job.json"), str(self.tmp / "out.json")], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def wait_ready(self) -> None:
        """Returns once the child has loaded its models and only waits (or has ended): from then on
        it takes no CPU time from what is timed here."""
        for line in self.proc.stdout:
            if line.strip() == READY:
                return

    def result(self, timeout: float) -> dict:
        out, _ = self.proc.communicate(GO, timeout=timeout)
        if self.proc.returncode != 0 or not (self.tmp / "out.json").is_file():
            err = (self.tmp / "stderr.txt").read_text(errors="replace")
            tail = (err or out).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"single-thread Keras timing exited {self.proc.returncode}: {tail[0][:300]}")
        return json.loads((self.tmp / "out.json").read_text())


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    opts = SimpleNamespace(**job["opts"])
    x = np.load(job["x"])
    models, results = {}, {}
    for path in job["runs"]:
        try:
            # Timing only: "raw" pixels cost what scaled ones cost, and a model file needs no names here.
            models[path] = load_run_model(load_source(path, preprocessing="raw", require_names=False))
        except Exception as e:  # one bad model must not lose the others' timings
            results[path] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    print(READY, flush=True)
    if sys.stdin.readline() != GO:  # the parent stopped before asking for timings
        return 1
    for path, model in models.items():
        try:
            results[path] = keras_timing(model, x, opts, 1, with_predict=False)["tf_function"]
        except Exception as e:
            results[path] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    Path(argv[1]).write_text(json.dumps(results, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
