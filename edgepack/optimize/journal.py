"""The search's study.journal (Optuna JournalFileBackend: one JSON object a line), checked before Optuna
reads it, so a damaged file is one line naming it instead of a decoder's traceback; and which of its
trials finished.

A last line without its newline is a record a killed writer left half-written (Optuna appends each
record with its newline in one write, under a lock): the operation it held never completed, so it is
cut off and the search resumes from the records before it (a trial it would have finished is then
recovered like any trial a kill cut off). Anything else that is not a JSON object per line (binary or
text garbage, a damaged line before the last) is refused: the study cannot be trusted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgepack.errors import EdgepackError

# A trial told a finished trial's result instead of running the same parameters again records that
# trial's number under this user attribute.
SAME_AS = "same_as"


def check(path: Path) -> None:
    """Refuse a damaged journal at `path` (absent is fine); cut off a half-written last record."""
    if not path.is_file():
        return
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]  # up to the last newline ("" if there is none)
    tail = raw[len(complete):]
    lines = complete.splitlines()
    if tail and not (tail.startswith(b"{") and tail.isascii()):  # Optuna writes ASCII JSON objects
        lines.append(tail)  # not the start of a record: damage, refused below
    for number, line in enumerate(lines, start=1):
        try:
            ok = isinstance(json.loads(line.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            raise EdgepackError(f"{path} is damaged (line {number} is not a study record): move it away "
                                "to start the search again, or choose another --out")
    if tail:
        with open(path, "r+b") as f:
            f.truncate(len(complete))
            f.flush()
            os.fsync(f.fileno())
        print(f"{path}: cut off a half-written last record ({len(tail)} bytes, left by a "
              "killed writer); resuming from the records before it", flush=True)


def finished(study) -> list:
    """Trials that ran to an end (complete, pruned or failed on their own; not cut off by a kill)."""
    from optuna.trial import TrialState

    killed = set(study.user_attrs.get("killed", []))
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.number not in killed]
