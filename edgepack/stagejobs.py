"""The pipeline's stage bodies as module-level functions of plain arguments, so edgepack.executor can
send them to Ray workers (pickled by reference) or call them in this process alike.

Each writes its output folder atomically (rundir.atomic_dir under the stage's own command) with the
same seed on every attempt, so a task retried after its worker died writes the same result.
"""

from __future__ import annotations

from pathlib import Path

from edgepack.compress import compress
from edgepack.export import export
from edgepack.train import train

GIB = 1 << 30
# What each kind of job declares to the cluster (cores; memory in bytes). Rough upper bounds for the
# tutorial CNN on all of CIFAR-10: TensorFlow itself takes ~1 GB, the training images as float32
# 0.6 GB; not measured per stage.
RESOURCES = {
    "train": {"num_cpus": 1, "memory": 3 * GIB},
    # Side by side on worker processes (edgepack.executor): a fit of the tutorial CNN gains little from a
    # second core, and an export keeps about one busy.
    "compress": {"num_cpus": 1, "memory": 3 * GIB, "parallel": True},
    "export": {"num_cpus": 1, "memory": 2 * GIB, "parallel": True},
    "compare": {"num_cpus": 1, "memory": 3 * GIB, "timing": True},  # measures latency: alone on its host
    # an optimize trial: fine-tunings, exports, then latency of its files: one trial per host at a time
    "trial": {"num_cpus": 1, "memory": 3 * GIB, "timing": True},
}


def train_job(path: Path, cfg, ds) -> None:
    train(None, path, cfg, force=True, ds=ds)


def compress_job(source: Path, technique: str, path: Path, params: dict, ds, variant: str, seed: int) -> None:
    compress(source, technique, path, params=params, force=True, ds=ds, variant=variant, seed=seed)


def export_job(source: Path, fmt: str, path: Path, options: dict, ds) -> None:
    export(source, [fmt], path, options=options, force=True, ds=ds)


def compare_job(inputs: list[Path], path: Path, baseline: Path, opts, ds, failures: list[dict],
                settings: dict):
    """The whole comparison in one job: its rows share the baseline's predictions and one host's
    timings, so it is not split. Returns the results, also when the gate failed (the caller raises)."""
    from edgepack.report.compare import GateFailed, compare  # noqa: PLC0415  its rows need pydantic (toolchain)

    try:
        return compare(inputs, path, baseline=baseline, control=None, options=opts, force=True, ds=ds,
                       failures=failures, settings=settings)
    except GateFailed as e:  # the report is written: the stage is complete, the driver fails the command
        return e.results
