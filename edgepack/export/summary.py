"""An export folder's `export.json` as a typed record: what `edgepack export` wrote and how each file fared.

`edgepack.export.core` writes it (checked through edgepack.typed.validate before it is written); every
reader of an export folder (compare, explain, optimize) opens it with `read()`, which refuses a damaged
or wrongly typed file in one line naming the file, the key and the fix. Keys a newer writer adds are
ignored; keys added over time are optional, so older export folders still open. Plain dataclasses (no
pydantic to import): the runtime-only CLI imports this through edgepack.report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgepack.atomic import RECORD_CONFIG, json_ready, read_json
from edgepack.errors import EdgepackError, KeyProblem

SCHEMA_VERSION = 1
SUMMARY = "export.json"
FIX = "re-run the export"
_CHECKED = RECORD_CONFIG


@dataclass(frozen=True)
class CheckImages:
    """The labelled images every file was checked on (edgepack.export.core.check_indices)."""

    __pydantic_config__ = _CHECKED
    images: int
    seed: int
    split: str  # "train" (files exported before the check moved off the test set: "test")
    source_accuracy: float | None = None  # the source model's accuracy on them
    apart_from_calibration: bool | None = None  # none of them calibrated the file (False: tiny data)


@dataclass(frozen=True)
class Trial:
    """One file a format tried (formats that try several, e.g. onnx-int8's portable schemes)."""

    __pydantic_config__ = _CHECKED
    options: dict[str, Any]  # the options that differ from the asked ones
    passed: bool
    accuracy: float | None = None
    source_accuracy: float | None = None
    drop_points: float | None = None  # accuracy points lost against the source
    top1_agreement: float | None = None
    refused_by: str | None = None  # the check's rules that refused it
    error: str | None = None  # its conversion's failure (no figures)


@dataclass(frozen=True)
class FormatEntry:
    """One format's outcome: a checked file ("ok") or why none was written ("error")."""

    __pydantic_config__ = _CHECKED
    file: str | None  # the file inside the export folder (None: not written)
    runtime: str  # "tflite" or "onnx"
    options: dict[str, Any]  # the options it was made with
    status: Literal["ok", "error"]
    metadata_file: str | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None  # the file gzip'ed at level 9
    input_dtype: str | None = None
    output_dtype: str | None = None
    checks: dict[str, Any] | None = None  # the check's figures (edgepack.export.core.check_file)
    seconds: float | None = None
    error: str | None = None  # status "error": why
    trials: list[Trial] | None = None

    def __post_init__(self):
        if self.status == "ok" and not self.file:
            raise KeyProblem("file", "a format whose status is ok must name its file")


@dataclass(frozen=True, kw_only=True)
class ExportSummary:
    """export.json (schema version 1)."""

    __pydantic_config__ = _CHECKED
    schema_version: int
    source: str  # the run folder (or model file) exported
    source_sha256: str | None
    technique: str
    variant: str
    source_accuracy: float | None  # the source's recorded test accuracy
    qat_source: bool
    data_source: str | None
    data_sha256: str | None
    data_matches_source: bool | None = None  # False: not the data the source was trained on
    check: CheckImages
    calibration: dict[str, Any]
    formats: dict[str, FormatEntry]
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it does not apply
    failed: list[str] = field(default_factory=list)
    all: bool = False  # `--format all` was asked
    versions: dict[str, str | None] = field(default_factory=dict)
    non_finite: dict[str, str] | None = None  # edgepack.atomic.write_json's note (NaN written as null)

    def __post_init__(self):
        if self.schema_version != SCHEMA_VERSION:
            raise KeyProblem("schema_version", f"export schema {self.schema_version} is not this "
                             f"edgepack's ({SCHEMA_VERSION})")


def read(folder: str | os.PathLike) -> ExportSummary:
    """The export.json of export folder `folder`; EdgepackError (one line) when missing or unusable."""
    path = Path(folder) / SUMMARY
    return _checked(read_json(path), f"{path}: ", EdgepackError, FIX)


def check(summary: dict) -> dict:
    """A writer's export.json, as it will be written, checked (ValueError: a wrong key or type is a bug)."""
    ready = json_ready(summary)
    _checked(ready, f"{SUMMARY}: ", ValueError)
    return ready


def _checked(raw: Any, where: str, error: type[Exception], fix: str = "") -> ExportSummary:
    from edgepack.typed import validate  # noqa: PLC0415  pydantic (toolchain extra): not for the runtime-only CLI

    return validate(ExportSummary, raw, where, fix=fix, error=error)
