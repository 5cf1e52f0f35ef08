"""The typed results of `edgepack compare`: one `ResultRow` per model and the `Results` document.

results.json is written from these models (`dump`) and read back into them (`read_results`), and
report.md, report.html and results.csv are rendered from them (edgepack.report.render): one
declaration of every key, its type and its unit (the schema in words: edgepack.report.compare).
Accuracies are fractions in [0, 1]; changes are in points; sizes in bytes; latencies in
milliseconds; throughput in images per second; None (null) = not measured.
Needs pydantic (the toolchain extra), like everything that makes or reads a comparison.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepack.atomic import read_json
from edgepack.errors import EdgepackError
from edgepack.explain.kernels import KernelFacts
from edgepack.explain.layers import LayerError
from edgepack.report.options import CompareOptions
from edgepack.target.figures import Figures
from edgepack.typed import validate

SCHEMA_VERSION = 1  # results.json's layout; a file of another version is refused (read_results)
KIND = "edgepack-compare"
RERUN = "re-run `edgepack compare` (or `edgepack pipeline`) with this edgepack to rewrite it"


class Part(BaseModel):
    """Every part: unknown keys are refused and assignments are checked, so a writer cannot add a key
    the schema does not declare."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, serialize_by_alias=True,
                              validate_by_name=True, validate_by_alias=True)
    TOP_LEVEL: ClassVar[str] = "key"  # edgepack.typed's word for an unknown key at the top


class Timing(Part):
    """One latency measurement (edgepack.timing.Latency.as_dict, plus threads and throughput)."""

    p50_ms: float  # batch-1 median
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int  # timed calls
    warmup: int  # untimed calls before them
    round_p50_ms: list[float] = []  # medians of consecutive slices of the runs (their spread = noise)
    threads: int  # threads the engine ran with
    throughput_ips: float | None = None  # images/s at batch 64 (None: not measured, model.predict)


class Latency(Part):
    """A row's timings: 1 thread, all usable cores, and (Keras) model.predict on all cores."""

    method: str | None = None  # what was timed, in words
    threads_1: Timing | None = None
    threads_all: Timing | None = None
    predict_threads_all: Timing | None = None  # Keras model.predict (the baseline, or every run)
    error: str | None = None  # why timing failed (the row's accuracy still stands)

    def p50(self, key: str) -> float | None:
        """The p50 of the timing `key` ("threads_1", "threads_all"), None when not measured."""
        t = getattr(self, key)
        return t.p50_ms if t else None

    def best(self) -> Timing | None:
        """The 1-thread timing, else the all-cores one: what rankings and notes compare."""
        return self.threads_1 or self.threads_all


class Recipe(Part):
    """How a model was fine-tuned (run metadata; files: their source run's)."""

    epochs: int
    learning_rate: float
    # every (epochs, learning rate[, distillation weight, temperature][, augment]) phase from the
    # trained model on, where recorded (edgepack.compress.schedule.phase_of)
    schedule: list[list[bool | int | float | str]] | None = Field(default=None,
                                                                  exclude_if=lambda v: v is None)


class Memory(Part):
    """On-device memory (edgepack.explain.memory.describe; Keras rows: counted from their layers)."""

    weight_bytes: int
    activation_bytes: int  # peak of live activation tensors, batch 1
    largest_activation_bytes: int
    total_activation_bytes: int
    peak_step: int
    method: str
    peak_rss_mb: float | None = None  # measured in a fresh runtime process (None: Keras rows)
    rss_base_mb: float | None = None  # the same process without the model
    rss_model_mb: float | None = None


class Change(Part):
    """A row's accuracy change against a reference on the same images (edgepack.report.stats)."""

    delta_pts: float
    p_value: float  # exact McNemar
    ci_pts: tuple[float, float]  # 95% paired-bootstrap interval, points
    only_this_right: int  # discordant images
    only_ref_right: int
    within_noise: bool  # p >= 0.05


class LatencyInterval(Part):
    """Median and min-max of a timing's round medians (edgepack.report.stats.latency_interval)."""

    p50_ms: float
    low_ms: float
    high_ms: float
    rounds: int
    threads: str  # which timing: "threads_1" or "threads_all"


class Confidence(Part):
    rule: str  # the noise rule in words
    vs_baseline: Change | None = None
    vs_control: Change | None = None
    latency: LatencyInterval | None = None
    latency_vs_baseline_within_noise: bool | None = None  # the two latency intervals overlap


class FlipPair(Part):
    from_: str = Field(alias="from")  # the baseline's class
    to: str  # this row's class
    count: int


class Flips(Part):
    """What changed image by image against the baseline (edgepack.report.flips)."""

    changed: int  # images whose top-1 differs
    per_class_delta_pts: dict[str, float]
    pairs: list[FlipPair]  # most frequent first


class Host(Part):
    """The machine that evaluated and timed a row (edgepack.report.env.host)."""

    node: str | None = None
    model: str | None = None
    machine: str | None = None
    isa_flags: list[str] = []
    int8_paths: dict[str, Any] | None = None  # edgepack.runtime.cpu.int8_paths
    flags_differ: bool = False  # CPUID and /proc/cpuinfo disagree (an emulated CPU)


class ResultRow(Part):
    """One compared model (a Keras run folder or an exported file); every key is always written."""

    id: str  # "<variant>/<format>", e.g. "prune-0.8/tflite-int8"
    variant: str
    technique: str
    format: str  # "keras" for a run folder, else the export format
    kind: Literal["run", "file"]
    path: str | None = None  # what was evaluated (None: the model failed before compare)
    status: Literal["ok", "error", "skipped"] = "ok"
    error: str | None = None  # "<stage>: <what went wrong or why skipped>"
    accuracy: float | None = None
    precision_macro: float | None = None
    recall_macro: float | None = None
    f1_macro: float | None = None
    per_class_accuracy: dict[str, float] | None = None
    confusion_matrix: list[list[int]] | None = None  # rows = true class, columns = predicted
    weak_classes: dict[str, float] | None = None  # class -> recall, for the weak ones
    num_test_images: int | None = None
    accuracy_recorded: float | None = None  # the run folder's metrics.json (Keras rows)
    accuracy_check: str | None = None  # "equal", "mismatch" or "skipped: <why>"
    agreement: float | None = None  # same top-1 as the baseline Keras model
    delta_pts_vs_baseline: float | None = None  # derived (edgepack.report.derived)
    delta_pts_vs_control: float | None = None  # derived
    control_ref: str | None = None  # derived: the row delta_pts_vs_control compares with
    finetune_recipe: Recipe | None = None
    size_bytes: int | None = None
    size_gzip_bytes: int | None = None
    size_ratio_gzip: float | None = None  # derived: baseline's size / this size
    size_ratio_raw: float | None = None  # derived
    parameters: int | None = None
    sparsity: float | None = None
    sparsity_source: Literal["model", "file", "source-run"] | None = None
    source_sha256: str | None = None
    model_sha256: str | None = None
    latency: Latency = Field(default_factory=Latency)
    speedup: float | None = None  # derived: baseline p50 / this p50 (same CPU)
    memory_rss_delta_mb: float | None = None
    recommended: bool = False  # derived
    eval_seconds: float | None = None
    reference_accuracy: float | None = None  # int8 files on the engines' reference kernels
    kernel_gap_points: float | None = None
    kernel_path: str | None = None
    notes: list[str] = []
    memory: Memory | None = None
    worst_layers: list[LayerError] | None = None
    kernel_facts: KernelFacts | None = None
    confidence: Confidence | None = None  # edgepack.report.explain
    flips: Flips | None = None
    flip_sheet: str | None = None  # report-relative PNG
    host: Host | None = None  # edgepack.report.hosts
    target: Figures | None = None  # edgepack.report.targets (None: the host target)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class DataInfo(Part):
    source: str
    sha256: str | None = None
    num_test_images: int
    limit_test: int | None = None  # None: the full test set, else the subset's size


class Gate(Part):
    fail_over: float  # points
    failed: list[str]  # row ids
    passed: bool


class TargetSummary(Part):
    """The device target's verdict (edgepack.report.targets.summarise)."""

    name: str
    summary: str
    kernels: str
    budgets: bool  # --ram / --flash apply
    ram_method: str | None = None
    flash_method: str | None = None
    budget: dict[str, int | None]  # {ram_bytes, flash_bytes}
    runnable: list[str]  # row ids
    fitting: list[str]
    closest: str | None = None
    none_fit: bool


class CpuGroup(Part):
    """A distinct CPU among the rows' hosts (edgepack.report.hosts.cpu_groups)."""

    label: str  # "[1]"
    model: str | None = None
    isa_flags: list[str]
    int8_paths: dict[str, Any] | None = None
    nodes: list[str | None]


class Results(Part):
    """The whole results.json, in the order it is written."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["edgepack-compare"] = KIND
    created: str  # UTC, ISO 8601
    wall_seconds: float | None = None
    data: DataInfo
    options: CompareOptions
    environment: dict[str, Any]  # {cpu, versions, platform, git_commit} (edgepack.report.env)
    baseline: str | None = None  # row ids
    control: str | None = None
    controls: list[str] = []
    recommended: str | None = None
    gate: Gate | None = None
    settings: dict[str, Any] | None = None
    rows: list[ResultRow]
    target: TargetSummary | None = None
    imbalance: str | None = None
    cpu_groups: list[CpuGroup] = []
    device_results: list[dict[str, Any]] = []  # edgepack.report.devices.section
    # written by edgepack.atomic.write_json when a figure was NaN or infinite (then null)
    non_finite: dict[str, str] | None = Field(default=None, exclude_if=lambda v: v is None)

    def row(self, row_id: str | None) -> ResultRow | None:
        return next((r for r in self.rows if r.id == row_id), None)


def dump(results: Results) -> dict:
    """The JSON document results.json holds."""
    return results.model_dump(mode="json")


def read_results(path: str | os.PathLike) -> Results:
    """results.json as Results; EdgepackError (one line naming the file and the fix) if it is of
    another schema version, or naming the row and key if a value has the wrong type."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("kind", KIND) != KIND:  # no kind: an early compare's
        raise EdgepackError(f"{path} is not an `edgepack compare` results.json (kind is not {KIND!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EdgepackError(f"{path} has results schema_version {version!r}, this edgepack reads "
                            f"{SCHEMA_VERSION}: {RERUN}")
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise EdgepackError(f"{path}: rows must be a list of objects: {RERUN}")
    typed = [validate(ResultRow, r, f"{path}: row {r.get('id')!r}: ", fix=RERUN) for r in rows]
    return validate(Results, {**data, "rows": typed}, f"{path}: ", fix=RERUN)


def is_current(path: str | os.PathLike) -> bool:
    """`path` is a results.json this edgepack reads (a report folder that need not be made again)."""
    try:
        read_results(path)
    except EdgepackError:
        return False
    return True
