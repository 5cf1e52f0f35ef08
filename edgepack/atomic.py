"""Files written whole or not at all: temporary siblings, and strict JSON written atomically and read
back with one-line errors. The bottom layer of run folders (edgepack.rundir) and their records
(edgepack.runmeta); standard library only.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

from edgepack.errors import RunFolderError

TMP_MARK = ".tmp-"  # temporary folders/files are named `.<name>.tmp-<random>`


def tmp_sibling(path: Path) -> Path:
    """A hidden temporary name beside `path`: `.<name>.tmp-<random>`."""
    return path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write strict JSON atomically (temporary name, fsync, rename).

    NaN and inf are not JSON: each becomes null, and a dict `obj` gets a "non_finite" entry saying
    which value was what (e.g. {"history.loss[3]": "nan"}). Other objects holding them are refused.
    """
    path = Path(path)
    obj = json_ready(obj, path)
    tmp = tmp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, allow_nan=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# The pydantic config of the JSON records edgepack reads back (metrics.json, export.json), checked by
# edgepack.typed.validate: strict types ("1" is not a number); keys a newer writer adds are ignored.
RECORD_CONFIG = {"strict": True, "extra": "ignore"}


def json_ready(obj: Any, where: str | os.PathLike = "JSON") -> Any:
    """`obj` as write_json writes it: numpy values as Python ones, NaN/inf as null and, for a dict, a
    "non_finite" entry saying which value was what. Ready twice is ready once."""
    notes: dict[str, str] = {}
    obj = _finite(obj, "", notes)
    if notes:
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: cannot record non-finite values {notes} outside a JSON object")
        why = {k: f"{v}: not a finite number, written as null" for k, v in notes.items()}
        obj = {**obj, "non_finite": why}
    return obj


def _finite(obj: Any, where: str, notes: dict[str, str]) -> Any:
    """`obj` with numpy values as Python ones and every NaN/inf float as None (noted in `notes`)."""
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), notes) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v, f"{where}[{i}]", notes) for i, v in enumerate(obj)]
    if hasattr(obj, "tolist") and not isinstance(obj, Path):  # numpy scalars and arrays
        return _finite(obj.tolist(), where, notes)
    if isinstance(obj, float) and not math.isfinite(obj):
        notes[where or "value"] = str(obj)
        return None
    return obj


def _json_default(obj: Any) -> Any:
    # Paths (numpy values are converted by _finite): everything else is a bug worth seeing.
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path} is not valid JSON ({e}); re-create the run folder") from None
