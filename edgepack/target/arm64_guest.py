"""Runs inside the emulated aarch64 Python (edgepack.target.arm64): edgepack.runtime on each file.

    python3.11 arm64_guest.py REQUEST.json      # {"files": [...], "images": "x.npy", "out": "dir"}
    python3.11 arm64_guest.py --versions        # prints the engines' versions as JSON (root check)

Only the standard library, numpy and edgepack.runtime (ONNX Runtime / LiteRT) are imported: the
emulated root has nothing else. Each file's probabilities go to OUT/<index>.npy and one JSON record
per file (or its error, one line) to OUT/results.json; the host compares them with its own run.
"""

from __future__ import annotations

import json
import platform
import struct
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from edgepack import runtime  # loads with this numpy and without TensorFlow

# Linux aarch64 hwcap bits (asm/hwcap.h) that pick the int8 kernels: AT_HWCAP (16), AT_HWCAP2 (26).
HWCAP = {"asimd": (16, 1), "asimddp": (16, 20), "sve": (16, 22), "sve2": (26, 1), "i8mm": (26, 13),
         "bf16": (26, 14), "sme": (26, 23)}


def hwcaps() -> list[str]:
    """The emulated CPU's features as the guest's kernel auxiliary vector gives them (what ONNX
    Runtime and XNNPACK read to choose kernels)."""
    try:
        words = dict(struct.iter_unpack("<QQ", Path("/proc/self/auxv").read_bytes()))
    except (OSError, struct.error):
        return []
    return [name for name, (key, bit) in HWCAP.items() if words.get(key, 0) >> bit & 1]


def versions() -> dict:
    import onnxruntime
    from ai_edge_litert import interpreter  # noqa: F401  the module edgepack.runtime loads

    return {"machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "ai_edge_litert": _dist_version("ai-edge-litert"),
            "hwcaps": hwcaps(), "tensorflow_loaded": "tensorflow" in sys.modules}


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run(request: dict) -> dict:
    images = np.load(request["images"], allow_pickle=False)
    out = Path(request["out"])
    rows = []
    for i, path in enumerate(request["files"]):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            clf = runtime.load(path, threads=request.get("threads"),
                               kernels=request.get("kernels", "default"))
            probs = clf.predict(images)
            np.save(out / f"{i}.npy", probs.astype(np.float32))
            rows.append({"file": path, "ok": True, "runtime": clf.runtime, "probs": f"{i}.npy",
                         "seconds": round(time.perf_counter() - start, 2),
                         "cpu_seconds": round(time.process_time() - cpu, 2)})
        except Exception as e:  # a file that fails becomes a row with its error, the others still run
            line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            rows.append({"file": path, "ok": False, "error": f"{type(e).__name__}: {line}"})
        row = rows[-1]  # the check's cost under emulation (not the file's speed on ARM)
        print(f"arm64: {Path(path).name} " + (f"checked in {row['seconds']:.0f} s ({row['cpu_seconds']:.0f} "
              "CPU-s) under emulation" if row["ok"] else row["error"]), file=sys.stderr, flush=True)
    return {"guest": versions(), "files": rows}


def main(argv: list[str]) -> int:
    if argv == ["--versions"]:
        print(json.dumps(versions()))
        return 0
    request = json.loads(Path(argv[0]).read_text())
    result = run(request)
    tmp = Path(request["out"]) / "results.json.partial"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.rename(Path(request["out"]) / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
