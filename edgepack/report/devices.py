"""Latencies measured on users' own devices (`edgepack bench --json`), read back into a compare report.

`edgepack compare --device-results device.json` reads each document strictly (edgepack.bench's schema;
a bad one is a one-line error), matches its files to the compared files by the sha256 of their bytes
(a file measured on the device that is not among the compared files is an error: its figure would
name a model the report does not show) and adds them to results.json as `device_results`:

    device_results  [{source (the JSON file given), label (CPU model, ISA labels, OS, runtime versions),
                      device (the document's device record: edgepack.bench.device), files: [{id (the
                      compared row's id), name, sha256, format, kernels, threads, status, error,
                      p50_ms, p90_ms, low_ms, high_ms (min-max of the round medians), runs, rounds}]}]

They stay out of the rows on purpose: another CPU's figures are never ranked against this machine's
(x faster, the recommendation and the speed notes read the rows only). Every figure is the device's
own; a device that runs under an emulator reports the emulated CPU, and its timings mean nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgepack.bench import KIND, SCHEMA_VERSION
from edgepack.errors import EdgepackError
from edgepack.report.rows import ResultRow, Results
from edgepack.rundir import sha256_file
from edgepack.typed import validate

Table = tuple[str, list[str], list[list[str]]]
OPTION = "--device-results"


def _ms(**kw):
    return Field(gt=0, allow_inf_nan=False, **kw)


class Timing(BaseModel):
    model_config = ConfigDict(extra="ignore")
    p50_ms: float = _ms()  # median of the round medians, milliseconds
    p90_ms: float = _ms()
    low_ms: float = _ms()  # min of the round medians
    high_ms: float = _ms()  # max of the round medians
    runs: int = Field(ge=1)
    rounds: int = Field(ge=1)


class Cpu(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None
    machine: str | None = None
    isa_flags: list[str]
    flags_differ: bool = False  # /proc/cpuinfo and CPUID disagree: an emulated or masked CPU


class Device(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cpu: Cpu
    os: str
    machine: str
    python: str
    versions: dict[str, str | None]


class FileResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$",
                               json_schema_extra={"want": "a sha256 hex digest (64 characters) or null"})
    format: str | None
    kernels: str
    threads: int = Field(ge=1)
    status: Literal["ok", "error"] = Field(json_schema_extra={"want": '"ok" or "error"'})
    error: str | None = None
    edgepack: Timing | None = None  # edgepack.runtime predict: what an app pays

    @model_validator(mode="after")
    def _measured(self):
        if self.status == "ok" and (self.sha256 is None or self.edgepack is None):
            raise ValueError(f"file {self.name!r} has status ok but no sha256 or edgepack timing")
        return self


class BenchDoc(BaseModel):
    model_config = ConfigDict(extra="ignore")
    device: Device
    files: list[FileResult] = Field(min_length=1)


def read(path: str | os.PathLike) -> BenchDoc:
    """One `edgepack bench --json` document, checked; EdgepackError (one line) if it is not one."""
    where = f"{OPTION} {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgepackError(f"{where} does not exist: pass the file `edgepack bench --json` wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgepackError(f"{where} is not JSON ({str(e).splitlines()[0]}): pass the output of "
                            "`edgepack bench MODEL... --json > device.json`") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise EdgepackError(f"{where} is not an `edgepack bench --json` result (kind is not {KIND!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise EdgepackError(f"{where} has schema_version {data.get('schema_version')!r}, this edgepack reads "
                            f"{SCHEMA_VERSION}: re-run `edgepack bench --json` with this edgepack version")
    return validate(BenchDoc, data, f"{where}: ")


def read_all(paths) -> list[tuple[str, BenchDoc]]:
    """Every --device-results file, checked before any work starts."""
    return [(str(p), read(p)) for p in paths or ()]


def match(docs: list[tuple[str, BenchDoc]], paths: list[Path]) -> None:
    """Refuse a file measured on a device that is none of the compared files (`paths`, by sha256)."""
    if not docs:
        return
    compared = {sha256_file(p) for p in paths}
    for source, doc in docs:
        for f in doc.files:
            if f.sha256 is not None and f.sha256 not in compared:
                raise EdgepackError(
                    f"{OPTION} {source}: {f.name} (sha256 {f.sha256[:12]}...) is none of the compared files: "
                    "compare the exact files the device timed (same bytes), or bench only those")


def label(device: Device) -> str:
    """The device in words: CPU model, ISA labels (as the process sees them), OS, runtime versions."""
    cpu = device.cpu
    isa = ", ".join(cpu.isa_flags) or "no ISA flags read"
    if cpu.flags_differ:
        isa += "; CPUID differs from /proc/cpuinfo: emulated CPU, timings meaningless"
    versions = ", ".join(f"{k} {v}" for k, v in device.versions.items() if v and k != "edgepack")
    return f"{cpu.model or 'unknown CPU'} ({isa}); {device.machine}; {device.os}; python {device.python}; " \
           f"{versions}"


def section(docs: list[tuple[str, BenchDoc]], rows: list[ResultRow]) -> list[dict]:
    """results.device_results: per device, its label and its files' figures under the ids of the
    compared rows with the same sha256."""
    by_sha = {r.model_sha256: r.id for r in rows if r.kind == "file" and r.model_sha256}
    out = []
    for source, doc in docs:
        files = []
        for f in doc.files:
            t = f.edgepack.model_dump() if f.edgepack else {k: None for k in Timing.model_fields}
            files.append({"id": by_sha.get(f.sha256) if f.sha256 else None, "name": f.name,
                          "sha256": f.sha256, "format": f.format, "kernels": f.kernels,
                          "threads": f.threads, "status": f.status, "error": f.error, **t})
        out.append({"source": source, "label": label(doc.device), "device": doc.device.model_dump(),
                    "files": files})
    return out


def tables(results: Results) -> list[Table]:
    """One table per device: compared row -> its p50 (round min-max), threads and kernels there."""
    headers = ["id", "device file", "format", "kernels", "threads", "p50 ms (round min-max)", "p90 ms",
               "runs", "status"]
    out = []
    for k, d in enumerate(results.device_results, 1):
        rows = []
        for f in d["files"]:
            ok = f["status"] == "ok"
            p50 = f"{f['p50_ms']:.3f} ({f['low_ms']:.3f}-{f['high_ms']:.3f})" if ok else "-"
            rows.append([f["id"] or "-", f["name"], f["format"] or "-", f["kernels"], str(f["threads"]), p50,
                         f"{f['p90_ms']:.3f}" if ok else "-", str(f["runs"]) if ok else "-",
                         "ok" if ok else f"error: {f['error']}"])
        out.append((f"Device {k}: {d['label']}", headers, rows))
    return out


def lines(results: Results) -> list[str]:
    """The section's lead: where the figures come from and why they are not ranked."""
    if not results.device_results:
        return []
    return ["Batch-1 latency of edgepack.runtime predict measured on each device with `edgepack bench "
            "--json` (files matched to the rows by sha256). Each device's figures hold for that device "
            "only: they are never compared with this machine's or ranked (x faster and the recommendation "
            "ignore them)."]
