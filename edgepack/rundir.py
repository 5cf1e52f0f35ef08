"""Run folders: the unit every stage reads and writes.

A run folder holds one model and what it takes to trust it:
    model file     (name recorded in metadata.json: `model_file`)
    metadata.json  what made it (kind, class names, input shape, scaling, hashes, versions, wall time)
    metrics.json   test-set metrics (edgepack.metrics schema)
    history.json   training / fine-tuning history (optional)
Folders are built under a temporary name next to the target and renamed when complete, so a
crash or a SIGKILL never leaves a half-written folder under the final name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from edgepack import model as model_mod
from edgepack import runmeta
from edgepack.atomic import json_ready, read_json, tmp_sibling, write_json
from edgepack.errors import RunFolderError
from edgepack.metrics import Metrics
from edgepack.runmeta import MODEL_FILE_KIND, RunMetadata
from edgepack.runtime.preprocess import PreprocessError, parse

METADATA = "metadata.json"
METRICS = "metrics.json"
HISTORY = "history.json"

# Packages whose versions go into every metadata record.
TRACKED_PACKAGES = ("edgepack", "numpy", "tensorflow", "tf-keras", "tensorflow-model-optimization",
                    "onnx", "tf2onnx", "onnxruntime", "ai-edge-litert", "scikit-learn")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of the file gzip'ed at level 9 with a fixed mtime: what compression saves on the wire."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0))


def check_output_path(out: str | os.PathLike, inputs: dict | None = None,
                      resume_marker: str | None = None) -> Path:
    """Refuse, before any work, an output path whose writing would destroy something.

    Refused: `.`, `/`, the current folder or one of its parents, and a path that is, contains or lies
    inside an input. `inputs` maps an option name to a path, a list of paths or None, e.g.
    {"--model": "runs/baseline"}. With `resume_marker` (a command that resumes in its folder), an
    existing `out` must be an empty folder or hold that file (the command's own folder): another
    command's run, export or pipeline folder is refused. Returns `out` made absolute (with `..`
    folded, links kept).
    """
    resolved = resolved_path(out, "--out")
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise RunFolderError(f"--out {out} is the current folder or one of its parents: "
                             "choose a new folder, e.g. --out runs/NAME")
    for option, given in (inputs or {}).items():
        paths = [given] if isinstance(given, str | os.PathLike) else list(given or [])
        for one in paths:
            src = resolved_path(one, option)
            if resolved == src or src.is_relative_to(resolved) or resolved.is_relative_to(src):
                how = ("is" if resolved == src else "contains" if src.is_relative_to(resolved)
                       else "lies inside")
                raise RunFolderError(f"--out {out} {how} the input {option} {one}: writing it would "
                                     "destroy the input; choose an --out outside it")
    if resume_marker and resolved.exists() and not (resolved / resume_marker).is_file() and (
            not resolved.is_dir() or any(resolved.iterdir())):
        raise RunFolderError(f"--out {out} exists and is not a folder this command made (no {resume_marker}):"
                             " choose a new or empty folder")
    return Path(os.path.abspath(out))


def resolved_path(path: str | os.PathLike, option: str) -> Path:
    """`path` with its links followed (Path.resolve); a symbolic link loop is a one-line error naming
    `option`, not the RuntimeError (Python < 3.13) or OSError pathlib raises."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise RunFolderError(f"{option} {path}: cannot follow its symbolic links ({e}): "
                             "point it at the real file or folder") from None


def check_new_output(out: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output folder unless `force` (checked before any work starts)."""
    out = Path(out)
    if out.exists() and not force:
        raise RunFolderError(f"output folder {out} already exists: choose another --out or pass --force")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output path {out} exists and is not a folder: choose another --out")
    parent = out.absolute().parent
    while not parent.exists():  # the folder that will hold it must be writable (checked before work)
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RunFolderError(f"cannot write {out}: {parent} is not a writable folder; choose another --out")
    return out


@contextlib.contextmanager
def claim_output(out: str | os.PathLike, inputs: dict | None = None, force: bool = False,
                 resume: bool = False) -> Iterator[Path]:
    """Check the output path `out` before any work; yields it made absolute.

    Every command that writes an output folder runs its work inside this block (see
    check_output_path for `inputs`). Unless `resume` (the pipeline re-uses its folder), `out` must
    be new or `force` given (check_new_output).
    """
    out = check_output_path(out, inputs)
    if not resume:
        check_new_output(out, force)
    with output_lock(out):
        yield out


def lock_paths(out: Path) -> tuple[Path, Path]:
    """The lock file of output folder `out` and the file naming its holder, both next to `out`."""
    return out.with_name(f".{out.name}.lock"), out.with_name(f".{out.name}.lock.json")


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the lock of output folder `out` (absolute) while the block runs; refuse a second writer.

    flock-based (filelock): the OS releases it when the holder dies, so a SIGKILLed run never blocks
    the next one. The lock file and the holder file (pid, host, command) are deleted on release.
    """
    from filelock import Timeout  # toolchain extra: imported here, so the runtime-only CLI (which
    #                                 imports this module through its export command) still starts

    lock_file, holder_file = lock_paths(out)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = _acquire(lock_file)
    except Timeout:
        raise RunFolderError(f"{out} is being written by another edgepack process ({_holder(holder_file)}): "
                             "wait for it to finish or choose another --out") from None
    try:
        write_json(holder_file, {"pid": os.getpid(), "host": platform.node(), "command": " ".join(sys.argv),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock_file.unlink(missing_ok=True)  # while still held: the next process locks a new file
        lock.release()


def _acquire(lock_file: Path, attempts: int = 5):
    """Lock `lock_file` without waiting (filelock.Timeout if another process holds it).

    A holder deletes the file before releasing it, so a process that opened the old file may lock a
    deleted one: the lock counts only if the path still names the file that was there before.
    """
    from filelock import FileLock, Timeout

    for _ in range(attempts):
        before = _inode(lock_file)
        lock = FileLock(lock_file, timeout=0)
        lock.acquire()
        if before is not None and _inode(lock_file) == before:
            return lock
        lock.release()  # we made the file or it was replaced meanwhile: lock the current one
    raise Timeout(str(lock_file))


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _holder(holder_file: Path) -> str:
    """Who holds a lock, from its holder file: pid, host, start time and command (or why unknown)."""
    try:
        h = json.loads(holder_file.read_text(encoding="utf-8"))
        return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"holder unknown, {holder_file.name} unreadable"


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `out` only if the block completes.

    On error the temporary folder is removed and an existing `out` is left untouched.
    With `force`, an existing `out` is replaced only after the new folder is complete.
    """
    out = Path(os.path.abspath(check_new_output(out, force)))  # `x/..` has no name for _tmp_sibling
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = tmp_sibling(out)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def git_commit() -> str | None:
    """The edgepack source tree's git commit, if it is a checkout (else None)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict[str, Any]:
    """What every metadata record says about the software that made it."""
    return {"versions": package_versions(), "git_commit": git_commit(),
            "command": " ".join(sys.argv), "platform": platform.platform()}


@dataclass(frozen=True)
class Run:
    """A complete run folder, checked."""

    path: Path  # the folder (or, for a user's model file, the file: see load_source)
    metadata: RunMetadata  # metadata.json (or what load_source read from the model and the options)
    metrics: Metrics | None  # metrics.json (None for a user's model file: nothing measured yet)
    model: Any = field(default=None, compare=False, repr=False)  # the loaded model, if already loaded

    @property
    def model_path(self) -> Path:
        if self.metadata.kind == MODEL_FILE_KIND:
            return self.path
        return self.path / self.metadata.model_file

    def data_path(self, given: str | os.PathLike | None = None) -> str | os.PathLike | None:
        """`given` (--data) if set, else the data this run was made from if it is still there, else
        None (then edgepack.data searches its usual places)."""
        if given:
            return given
        recorded = self.metadata.data_source
        return recorded if recorded and Path(recorded).exists() else None


def load_run(path: str | os.PathLike) -> Run:
    """Open a run folder and check it is complete: metadata, metrics and an intact model file."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path} is not a folder: pass a run folder made by `edgepack train` or "
                             "`edgepack compress`")
    for name in (METADATA, METRICS):
        if not (path / name).is_file():
            raise RunFolderError(f"{path} is not a complete run folder ({name} is missing): "
                                 "re-run the command that made it")
    meta = runmeta.read(path / METADATA)
    metrics = checked_metrics(read_json(path / METRICS), f"{path / METRICS}: ", RunFolderError,
                              "re-create the run folder with this edgepack version")
    model_path = path / meta.model_file
    if not model_path.exists():
        raise RunFolderError(f"{path} is not a complete run folder ({meta.model_file} is missing)")
    expected = meta.model_sha256
    if expected and model_path.is_file() and sha256_file(model_path) != expected:
        raise RunFolderError(f"{model_path} does not match the sha256 in {METADATA} (changed or corrupt): "
                             "re-create the run folder")
    return Run(path=path, metadata=meta, metrics=metrics)


def is_run_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / METADATA).is_file()


def load_source(path: str | os.PathLike, class_names: str | list[str] | None = None,
                preprocessing: str | None = None, data_class_names=None, require_names: bool = True) -> Run:
    """A run folder (load_run) or a user's model file / SavedModel folder as a Run with its model loaded.

    For a model file, metadata comes from the model (input shape, output count) and the options:
    class names from `class_names` (a list, "a,b,c" or a labels file, one name per line) else from
    the data (`data_class_names`); pixel scaling from `preprocessing` (edgepack.runtime.preprocess.parse)
    else "raw" when the model rescales itself (a Rescaling/Normalization layer before its first
    weighted layer), else an error asking for --preprocess. Without `require_names`, a file with no
    names given gets class_names None (edgepack.sources fills in the data's).
    """
    if is_run_folder(path) or (Path(path).is_dir() and not (Path(path) / "saved_model.pb").is_file()):
        return load_run(path)  # a folder that is no SavedModel: a run folder, or says what it lacks

    path = Path(path)
    model = model_mod.checked_model(model_mod.load_model(path, fix="check the file or re-save it"), path)
    info = model_mod.describe(model, path)
    names = _class_names(class_names, data_class_names, path, require_names)
    if names is not None and len(names) != info["num_classes"]:
        raise RunFolderError(f"{path} outputs {info['num_classes']} classes but {len(names)} class names "
                             "were given: pass --class-names with one name per output")
    meta = runmeta.build(kind=MODEL_FILE_KIND, technique="source", variant=path.stem or path.name,
                         model_file=path.name, model_format="keras", class_names=names,
                         num_outputs=info["num_classes"], input_shape=info["input_shape"],
                         pixel_scaling=_scaling(preprocessing, info["rescales"], path),
                         model_sha256=sha256_file(path) if path.is_file() else None)
    return Run(path=path, metadata=meta, metrics=None, model=model)


def _class_names(given, data_class_names, path: Path, required: bool = True) -> list[str] | None:
    if isinstance(given, str):
        p = Path(given)
        text = p.read_text(encoding="utf-8") if p.is_file() else given.replace(",", "\n")
        given = [line.strip() for line in text.splitlines() if line.strip()]
    if given:
        return [str(n) for n in given]
    if data_class_names:
        return list(data_class_names)
    if not required:
        return None
    raise RunFolderError(f"{path}: no class names: pass --class-names a,b,c or a labels file")


def _scaling(preprocessing: str | None, rescales: bool, path: Path) -> dict:
    if preprocessing:
        try:
            return parse(preprocessing)
        except PreprocessError as e:
            raise RunFolderError(f"--preprocess: {e}") from None
    if rescales:
        return parse("raw")
    raise RunFolderError(f"{path}: say how its pixels are scaled: --preprocess unit ([0, 1]), symmetric "
                         "([-1, 1]), raw (the model rescales itself) or mean-std:M1,M2,M3/S1,S2,S3")


def write_run_files(folder: Path, metadata: dict, metrics: dict, history: dict | None = None) -> None:
    """Finish a run folder whose model file is already saved: record its sha256, write the JSONs.

    `metadata` holds RunMetadata's fields (edgepack.runmeta); its `model_file` names the model file (or
    SavedModel folder) inside `folder`. The sha256, size and provenance are added here.
    """
    model_path = folder / metadata["model_file"]
    if model_path.is_file():
        metadata = {**metadata, "model_sha256": sha256_file(model_path),
                    "model_bytes": model_path.stat().st_size}
    meta = runmeta.build(**metadata, **provenance())  # checked before anything is written
    metrics = json_ready(metrics)  # as written (NaN as null, noted), then checked as it will be read
    checked_metrics(metrics, "metrics: ", ValueError)  # a writer's wrong key or type is a bug
    if history is not None:
        write_json(folder / HISTORY, history)
    write_json(folder / METRICS, metrics)
    runmeta.write(folder / METADATA, meta)  # written last: marks completion


def checked_metrics(raw: object, where: str, error: type[Exception], fix: str = "") -> Metrics:
    """metrics.json's content as the typed record, or `error` of one line naming the key."""
    from edgepack.typed import validate  # noqa: PLC0415  pydantic (toolchain extra): not for the runtime-only CLI

    return validate(Metrics, raw, where, fix=fix, error=error)
