"""What `edgepack compare` is given, resolved into one entry per row.

Inputs are run folders (a Keras model: `metadata.json` + `metrics.json`), exported files (`.tflite`
with its sidecar `<file>.json`, `.onnx` with `metadata_props["edgepack"]`) and export folders
(a folder with `export.json`: expanded to the model files inside, sorted by name, then one entry per
format its export.json records as failed or skipped, or as written but missing). An input that
cannot be opened still becomes an entry, with its error, so it ends up a row and not a crash.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.export import summary as export_summary
from edgepack.rundir import load_run, load_source
from edgepack.runmeta import RunMetadata
from edgepack.runtime import metadata as md
from edgepack.runtime.metadata import FileMetadata

FILE_SUFFIXES = (".tflite", ".onnx")
MODEL_FILE_SUFFIXES = (".keras", ".h5")  # a user's Keras model file (or a SavedModel folder)
EXPORT_MANIFEST = export_summary.SUMMARY
KERAS = "keras"  # the `format` of a Keras run folder's row


@dataclass
class Entry:
    """One model to evaluate: a Keras run folder or an exported file."""

    path: Path  # run folder or model file
    kind: str  # "run" or "file"
    format: str  # "keras" for run folders, else the export format ("tflite-int8", ...)
    variant: str  # the source run's variant name ("baseline", "prune-0.8", ...)
    technique: str  # "baseline", "finetune", "prune", ...
    metadata: RunMetadata | None = None  # run folders: metadata.json (edgepack.runmeta)
    file_metadata: FileMetadata | None = None  # exported files: their edgepack metadata
    run: object = None  # edgepack.rundir.Run for run folders
    error: str | None = None  # why it could not be opened or made (the row reports it)
    id_suffix: str = ""  # set when two inputs share variant and format
    stage: str = "open"  # where `error` happened: "open", or "export" (recorded in export.json)
    status: str = "error"  # the row's status when `error` is set: "error", or "skipped" (not applicable)

    @property
    def row_id(self) -> str:
        return f"{self.variant}/{self.format}{self.id_suffix}"


def expand(inputs: list[str | os.PathLike], source_options: dict | None = None) -> list[Entry]:
    """Entries for every input, in the order given (export folders expand in place).
    `source_options`: class_names / preprocessing for users' model files (edgepack.rundir.load_source)."""
    if not inputs:
        raise EdgepackError("nothing to compare: pass run folders, exported files or export folders")
    entries: list[Entry] = []
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise EdgepackError(f"{path} does not exist: pass run folders, exported files or export folders")
        manifest = path / EXPORT_MANIFEST
        targets = _export_files(path) if manifest.is_file() else [path]
        for target in targets:
            key = target.resolve()
            if key not in seen:  # the same file given twice is one row
                seen.add(key)
                entries.append(open_entry(target, source_options))
        if manifest.is_file():
            entries += recorded_failures(path)
    return entries


def _export_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES)
    if not files and not recorded_failures(folder):
        raise EdgepackError(f"{folder} has {EXPORT_MANIFEST} but no .tflite/.onnx files: re-run the export")
    return files


def recorded_failures(folder: Path) -> list[Entry]:
    """An export folder's formats that are not there, from its export.json: failed (its error, e.g. every
    int8 scheme tried with its figures), skipped (not applicable to the source) or written but missing."""
    try:
        summary = export_summary.read(folder)
    except EdgepackError as e:
        return [Entry(folder / EXPORT_MANIFEST, "file", "export", folder.name, "unknown", error=str(e))]
    variant, technique = summary.variant or folder.name, summary.technique or "unknown"
    out = []

    def add(name: str, error: str, status: str = "error") -> None:  # the row's path: the record
        out.append(Entry(folder / EXPORT_MANIFEST, "file", name, variant, technique, error=error,
                         stage="export", status=status))

    for name, entry in summary.formats.items():
        if entry.status != "ok":
            add(name, entry.error or "failed")
        elif not (folder / entry.file).is_file():
            add(name, f"{entry.file} is recorded in {EXPORT_MANIFEST} but missing: re-run the export")
    for name, reason in summary.skipped.items():
        add(name, reason, "skipped")
    return out


def open_entry(path: Path, source_options: dict | None = None) -> Entry:
    """Open one run folder, exported file or user's model file; failures are recorded in `error`."""
    if path.suffix in MODEL_FILE_SUFFIXES or (path / "saved_model.pb").is_file():
        return _model_file_entry(path, source_options or {})
    if path.is_dir():
        return _run_entry(path)
    if path.suffix in FILE_SUFFIXES:
        return _file_entry(path)
    raise EdgepackError(f"{path} is neither a run folder, an export folder, a .tflite/.onnx file nor a "
                        ".keras/.h5 model file")


def _model_file_entry(path: Path, source_options: dict) -> Entry:
    """A user's model file is the baseline of the comparison (its class names may come from the data:
    compare fills them in once the data is read)."""
    try:
        run = load_source(path, require_names=False, **source_options)
    except EdgepackError as e:
        return Entry(path, "run", KERAS, path.stem, "baseline", error=str(e))
    run = dataclasses.replace(run, metadata=dataclasses.replace(run.metadata, technique="baseline",
                                                                variant=path.stem))
    return Entry(path, "run", KERAS, path.stem, "baseline", run.metadata, run=run)


def _run_entry(path: Path) -> Entry:
    try:
        run = load_run(path)
    except EdgepackError as e:
        return Entry(path, "run", KERAS, path.name, "unknown", error=str(e))
    return Entry(path, "run", KERAS, run.metadata.variant, run.metadata.technique, run.metadata, run=run)


def _file_entry(path: Path) -> Entry:
    fallback = Entry(path, "file", path.suffix.lstrip("."), path.stem, "unknown")
    try:
        meta = md.read(path)  # the runtime's reader: one parser for every edgepack file
    except Exception as e:  # a missing sidecar, a corrupt file, an old schema: the row says so
        fallback.error = f"cannot read edgepack metadata: {type(e).__name__}: {str(e)[:200]}"
        return fallback
    return Entry(path, "file", meta.format, meta.variant, meta.technique, file_metadata=meta)
