"""The environment header of a report: CPU model, ISA flags, cores, library versions."""

from __future__ import annotations

import os
import platform

from edgepack.rundir import git_commit, package_versions
from edgepack.runtime.cpu import describe, read_cpuinfo, usable_cores


def cpu_info() -> dict:
    """CPU model, ISA flags edgepack cares about, logical cores (and physical where known)."""
    model, flags = read_cpuinfo()
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
        **describe(model, flags),  # model, machine, ISA labels, int8 paths: one builder with bench's
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "physical_cores": physical,
    }


def host() -> dict:
    """What every evaluated row records about the machine that timed it (edgepack.report.hosts)."""
    return {"node": platform.node(), **describe()}


def environment() -> dict:
    return {"cpu": cpu_info(), "versions": package_versions(), "platform": platform.platform(),
            "git_commit": git_commit()}
