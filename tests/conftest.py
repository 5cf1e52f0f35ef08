"""Shared fixtures: the real CIFAR-10 archive, tiny archives in the same format, a tiny model."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
# Export options that turn off the quantized formats' accuracy gate, for fixtures that test something
# else (the runtime, the report) on the tiny 1-epoch model: its near-tied outputs flip under int8
# rounding either way, so a gate on 20 images would test the fixture, not the code. The gate itself
# is tested in test_export.py on a model with clear margins.
NO_INT8_GATE = {"max_drop": 100.0, "min_agreement": 0.0}
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def real_data_path() -> Path | None:
    p = Path(os.environ.get("EDGEPACK_DATA") or DEFAULT_REAL)
    return p if p.exists() else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real archive; in CI its absence is a failure, not a skip."""
    p = real_data_path()
    if p is None:
        if os.environ.get("CI"):
            pytest.fail("real CIFAR-10 archive not found: set EDGEPACK_DATA")
        pytest.skip("real CIFAR-10 archive not found (set EDGEPACK_DATA)")
    return p


def batch_bytes(images: np.ndarray, labels, protocol: int = 2) -> bytes:
    """A CIFAR batch pickle exactly like the canonical one: dict of bytes keys, (N, 3072) uint8."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return pickle.dumps({b"batch_label": b"tiny", b"labels": [int(v) for v in labels], b"data": data,
                         b"filenames": [b"x.png"] * len(images)}, protocol=protocol)


def meta_bytes(names=CLASS_NAMES, per_batch: int = 10, protocol: int = 2) -> bytes:
    return pickle.dumps({b"label_names": [n.encode() for n in names], b"num_cases_per_batch": per_batch,
                         b"num_vis": 3072}, protocol=protocol)


def tiny_members(per_batch: int = 20, n_test: int = 20, seed: int = 0, protocol: int = 2) -> dict[str, bytes]:
    """Batch files of a tiny, learnable CIFAR-like set: each class has its own mean colour.
    `protocol`: the pickle protocol of every file (the official archive's is 2)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 10
        base = (y[:, None] * 25).astype(np.int64)  # class-dependent brightness
        x = np.clip(base[:, None, None, :] + rng.integers(0, 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return x, y

    members = {"batches.meta": meta_bytes(per_batch=per_batch, protocol=protocol)}
    for i in range(1, 6):
        members[f"data_batch_{i}"] = batch_bytes(*make(per_batch), protocol=protocol)
    members["test_batch"] = batch_bytes(*make(n_test), protocol=protocol)
    return members


def write_archive(path: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-py") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture
def no_data_sources(monkeypatch, tmp_path) -> Path:
    """Nowhere to find CIFAR-10 but what a command is given: no $EDGEPACK_DATA, an empty Keras cache
    (returned) and no network."""
    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.delenv("EDGEPACK_DATA", raising=False)
    monkeypatch.setattr("edgepack.data.KERAS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory) -> Path:
    """A tiny cifar-10-python.tar.gz: 100 training and 20 test images."""
    return write_archive(tmp_path_factory.mktemp("tiny") / "cifar-10-python.tar.gz", tiny_members())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_archive) -> Path:
    """A baseline run folder trained for 1 epoch on the tiny archive (a fast, real run folder)."""
    from edgepack.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "baseline"
    return train(tiny_archive, out, TrainConfig(epochs=1, batch_size=16))


@pytest.fixture(scope="session")
def tiny_split_run(tmp_path_factory, tiny_archive) -> Path:
    """A baseline like tiny_run that held out 10% of its training images (`train --validation-split
    0.1`, seed 0): the source `edgepack optimize` scores on those images for."""
    from edgepack.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "held-out"
    return train(tiny_archive, out, TrainConfig(epochs=1, batch_size=16, validation_split=0.1))


@pytest.fixture(scope="session")
def tiny_compressed(tmp_path_factory, tiny_archive, tiny_run) -> dict[str, Path]:
    """Real compressed run folders made from `tiny_run` on the tiny archive (1 epoch each, ~5 s each):
    "prune" (variant prune-0.5) and its fine-tune-only control "finetune" (same recipe)."""
    from edgepack.compress import compress

    root = tmp_path_factory.mktemp("compressed")
    recipe = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-4}
    return {"prune": compress(tiny_run, "prune", root / "prune", params={"sparsity": 0.5, **recipe},
                              data_path=tiny_archive, variant="prune-0.5"),
            "finetune": compress(tiny_run, "finetune", root / "finetune", params=recipe,
                                 data_path=tiny_archive, variant="finetune")}


@pytest.fixture(scope="session")
def real_cifar(real_data):
    """The real data set, loaded once per test session (about 3 s)."""
    from edgepack.data import load_data

    return load_data(real_data)


def export_files(run, formats: list[str], root: Path, **kwargs) -> dict[str, Path]:
    """`run` exported to `formats` in root/baseline without the int8 gate: format -> file."""
    from edgepack.export import export

    out = root / "baseline"
    s = export(run, formats, out, options=NO_INT8_GATE, **kwargs)
    return {name: out / f["file"] for name, f in s["formats"].items()}


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory, tiny_archive, tiny_run) -> dict[str, Path]:
    """`tiny_run` exported as tflite-int8 and onnx-fp32 (one export folder): format -> file."""
    return export_files(tiny_run, ["tflite-int8", "onnx-fp32"], tmp_path_factory.mktemp("tiny-exports"),
                        data_path=tiny_archive, check_images=20)


def result_row(rid: str, acc: float = 0.7, gz: int = 1000, p50: float = 1.0, status: str = "ok", **kw):
    """A synthetic compare row (edgepack.report.rows.ResultRow): id "<variant>/<format>" (no format:
    keras), accuracy `acc`, `gz` bytes raw and gzip'ed, 1-thread p50 `p50` ms; `kw` sets other fields."""
    from edgepack.report.rows import Latency, ResultRow, Timing

    variant, _, fmt = rid.partition("/")
    fmt = fmt or "keras"
    timing = Timing(p50_ms=p50, p90_ms=p50, p99_ms=p50, mean_ms=p50, runs=1, warmup=0, threads=1)
    fields = {"id": rid, "variant": variant, "technique": "x", "format": fmt,
              "kind": "run" if fmt == "keras" else "file", "status": status, "accuracy": acc, "f1_macro": acc,
              "delta_pts_vs_baseline": 100 * (acc - 0.70), "size_bytes": gz, "size_gzip_bytes": gz,
              "latency": Latency(threads_1=timing)}
    return ResultRow(**{**fields, **kw})


def results_of(rows: list, options=None, **kw):
    """A results document (edgepack.report.rows.Results) around synthetic rows, with what the report's
    header reads; `kw` sets other fields (baseline, controls, ...)."""
    from edgepack.report.options import CompareOptions
    from edgepack.report.rows import DataInfo, Results

    env = {"cpu": {"model": "m", "machine": "x86_64", "usable_cores": 2, "logical_cores": 2, "isa_flags": []},
           "versions": {}}
    data = DataInfo(source="s", num_test_images=20, limit_test=20)
    return Results(created="now", wall_seconds=1.0, data=data, options=options or CompareOptions(),
                   environment=env, rows=rows, **kw)
