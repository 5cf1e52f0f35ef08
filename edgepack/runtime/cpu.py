"""The CPU's ISA flags and the int8 kernel paths they select in ONNX Runtime and LiteRT (no TensorFlow).

Why it matters: the same int8 file runs different integer kernels on different CPUs, and some of
them are not exact. ONNX Runtime's MLAS multiplies uint8 activations by int8 weights with
VPMADDUBSW on x86-64 without VNNI (AVX2, AVX-512 without VNNI): each pair of products is summed
into a signed 16-bit lane with saturation, so |a1*w1 + a2*w2| > 32767 is clipped. A file whose
weights use the full int8 range [-127, 127] loses accuracy there (7.5 points measured on CIFAR-10);
one whose weights stay within [-64, 64] (7-bit, ORT's `reduce_range`) cannot saturate
(2 * 255 * 64 = 32640 <= 32767). With VNNI (VPDPBUSD), AMX or on ARM the sums are 32-bit: exact.
XNNPACK's x86 int8 kernels (LiteRT's default delegate) widen to 16-bit before multiplying (exact),
but without VNNI they are not faster than its fp32 kernels.

These are the dispatch rules of the engines' sources for the flags seen; the flags are facts of
this machine, the paths are the engines' documented choice for them. Reports name the path next
to every int8 accuracy and latency figure, so a reader knows which CPUs a figure holds for.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

try:  # numpy's run-time dispatch table of CPU features (numpy 2: numpy._core; 1.x: numpy.core)
    from numpy._core._multiarray_umath import __cpu_features__ as _NUMPY_CPU_FEATURES
except ImportError:
    try:
        from numpy.core._multiarray_umath import __cpu_features__ as _NUMPY_CPU_FEATURES
    except ImportError:
        _NUMPY_CPU_FEATURES = None

# ISA features that decide which kernels TFLite / ONNX Runtime / oneDNN can use (cpuinfo flag names).
ISA_FLAGS = {
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX-TILE", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16", "neon": "NEON", "asimd": "ASIMD",
    "asimddp": "ARM dot-product",
}

# numpy's run-time CPUID view (__cpu_features__) of the x86 flags above, by cpuinfo name. The engines
# dispatch on CPUID, not on /proc/cpuinfo: under an emulator (qemu-user passes the host's /proc/cpuinfo
# through) or a hypervisor that masks features the two differ, and CPUID is what the kernels see.
CPUID_X86 = {"AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
             "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16"}

SATURATION_FREE_WEIGHT = 64  # max |int8 weight| for which a u8*s8 pair sum fits int16 (2*255*64 = 32640)


def read_cpuinfo() -> tuple[str | None, set[str]]:
    """(model name, flags) from /proc/cpuinfo; (None, empty) where it cannot be read."""
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


def cpuid_flags() -> set[str] | None:
    """The CPUID_X86 flags this process sees (numpy's run-time dispatch check); None without it."""
    features = _NUMPY_CPU_FEATURES or {}
    if not any(features.get(name) is not None for name in CPUID_X86):
        return None
    return {flag for name, flag in CPUID_X86.items() if features.get(name)}


def seen_flags(cpuinfo: set[str], cpuid: set[str] | None) -> tuple[set[str], bool]:
    """(the flags the engines see, whether /proc/cpuinfo disagrees with CPUID).

    When the x86 flags of /proc/cpuinfo differ from CPUID's, the process runs on another CPU than the
    one /proc/cpuinfo describes (emulated, or features masked): CPUID's flags are the truth, and flags
    CPUID_X86 does not cover (AMX, AVX-VNNI) are dropped rather than guessed from the host."""
    if cpuid is None or not cpuinfo or not cpuinfo & set(CPUID_X86.values()):
        return cpuinfo, False  # not x86 (ARM lists no such flags), or nothing to compare
    if cpuinfo & set(CPUID_X86.values()) == cpuid:
        return cpuinfo, False
    return set(cpuid), True


def int8_paths(flags: set[str], machine: str | None = None) -> dict:
    """The int8 kernel path each engine takes for these CPU flags, and whether it is exact.

    Returns {"isa": short name, "onnxruntime": {...}, "litert": {...}}; each engine entry has
    "path" (words), "exact" (bool: integer sums cannot saturate for any int8 file) and, for ONNX
    Runtime, "exact_for" (which files are exact there).
    """
    machine = (machine or platform.machine()).lower()
    if not flags:
        unknown = {"path": "unknown (CPU flags could not be read)", "exact": None}
        return {"isa": "unknown", "onnxruntime": {**unknown, "exact_for": "unknown"},
                "litert": {**unknown, "fast": None}}
    if machine in ("aarch64", "arm64") or "asimd" in flags or "neon" in flags:
        dot = "asimddp" in flags
        isa = "ARM64 with dot-product" if dot else "ARM64 (NEON, no dot-product)"
        ort = {"path": "MLAS " + ("SDOT/UDOT 32-bit dot products" if dot else "NEON widening multiplies"),
               "exact": True, "exact_for": "every int8 file"}
        lite = {"path": "XNNPACK " + ("dot-product" if dot else "NEON") + " int8 kernels", "exact": True,
                "fast": dot}
        return {"isa": isa, "onnxruntime": ort, "litert": lite}
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    amx = "amx_int8" in flags and "amx_tile" in flags
    if amx:
        isa = "x86-64 AMX-INT8 + AVX-512 VNNI"
        ort_path = "MLAS AMX tiles / VPDPBUSD (32-bit sums)"
    elif vnni:
        isa = "x86-64 " + ("AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-VNNI")
        ort_path = "MLAS VPDPBUSD (32-bit sums)"
    else:
        isa = "x86-64 " + ("AVX-512 without VNNI" if "avx512bw" in flags else
                           "AVX2 without VNNI" if "avx2" in flags else "SSE (no AVX2)")
        ort_path = "MLAS VPMADDUBSW (u8*s8 pairs summed into int16 with saturation)"
    ort = {"path": ort_path, "exact": vnni or amx,
           "exact_for": "every int8 file" if vnni or amx else
           f"files whose weights stay within [-{SATURATION_FREE_WEIGHT}, {SATURATION_FREE_WEIGHT}] "
           "or with uint8 weights and activations (U8U8 kernels): edgepack's portable schemes"}
    lite = {"path": "XNNPACK " + ("VNNI" if vnni else "16-bit widening (VPMADDWD)") + " int8 kernels",
            "exact": True, "fast": vnni}
    return {"isa": isa, "onnxruntime": ort, "litert": lite}


def describe(model: str | None = None, flags: set[str] | None = None) -> dict:
    """This machine: CPU model, ISA labels and the int8 paths (the report's and bench's header);
    `model` and `flags` default to /proc/cpuinfo's, its flags checked against CPUID (seen_flags):
    "flags_differ" is then true when the process sees other features than /proc/cpuinfo lists
    (an emulated CPU: the model name is the host's, the ISA labels are what the kernels see)."""
    differs = False
    if model is None and flags is None:
        model, flags = read_cpuinfo()
        flags, differs = seen_flags(flags, cpuid_flags())
    flags = flags or set()
    return {"model": model or platform.processor() or None, "machine": platform.machine(),
            "isa_flags": [label for flag, label in ISA_FLAGS.items() if flag in flags],
            "int8_paths": int8_paths(flags), "flags_differ": differs}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), which is what "all cores" timing uses."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
