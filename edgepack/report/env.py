"""The environment header of a report: CPU model, ISA flags, cores, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# ISA features that decide which kernels TFLite / ONNX Runtime / oneDNN can use (cpuinfo flag names).
ISA_FLAGS = {
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX-TILE", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16", "neon": "NEON", "asimd": "ASIMD",
}


def _proc_cpuinfo() -> tuple[str | None, set[str]]:
    model, flags = None, set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_info() -> dict:
    """CPU model, ISA flags edgepack cares about, logical cores (and physical where known)."""
    model, flags = _proc_cpuinfo()
    if model is None or not flags:
        try:
            import cpuinfo  # py-cpuinfo: slower (it may spawn a process), used only as a fallback

            info = cpuinfo.get_cpu_info()
            model = model or info.get("brand_raw")
            flags = flags or set(info.get("flags", []))
        except Exception:
            pass
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:
        pass
    return {
        "model": model or platform.processor() or None,
        "machine": platform.machine(),
        "isa_flags": [label for flag, label in ISA_FLAGS.items() if flag in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "physical_cores": physical,
    }


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), which is what "all cores" timing uses."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment() -> dict:
    from edgepack.rundir import git_commit, package_versions

    return {"cpu": cpu_info(), "versions": package_versions(), "platform": platform.platform(),
            "git_commit": git_commit()}
