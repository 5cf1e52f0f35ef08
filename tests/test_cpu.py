"""The int8 kernel paths named for a set of CPU flags: a pure function, tested on given flags (the
CPU running the tests is never read here)."""

from __future__ import annotations

import pytest
from conftest import result_row

from edgepack.report.notes import speed_note
from edgepack.runtime.cpu import SATURATION_FREE_WEIGHT, int8_paths

AVX2 = {"avx2", "fma", "sse4_2"}
AVX512 = AVX2 | {"avx512f", "avx512bw"}
VNNI = AVX512 | {"avx512_vnni"}
AMX = VNNI | {"amx_tile", "amx_int8"}


@pytest.mark.parametrize("flags, isa, exact", [
    (AVX2, "x86-64 AVX2 without VNNI", False),
    (AVX512, "x86-64 AVX-512 without VNNI", False),
    (AVX2 | {"avx_vnni"}, "x86-64 AVX-VNNI", True),
    (VNNI, "x86-64 AVX-512 VNNI", True),
    (AMX, "x86-64 AMX-INT8 + AVX-512 VNNI", True),
])
def test_x86_paths(flags, isa, exact):
    p = int8_paths(flags, "x86_64")
    assert p["isa"] == isa and p["onnxruntime"]["exact"] is exact
    assert ("VPMADDUBSW" in p["onnxruntime"]["path"]) is not exact
    if not exact:  # without VNNI: exact only for the portable scheme's files
        assert f"[-{SATURATION_FREE_WEIGHT}, {SATURATION_FREE_WEIGHT}]" in p["onnxruntime"]["exact_for"]
    assert p["litert"]["exact"] is True and p["litert"]["fast"] is exact


def test_arm_and_unknown():
    assert int8_paths({"asimd", "asimddp"}, "aarch64")["onnxruntime"]["exact"] is True
    assert int8_paths({"asimd"}, "aarch64")["litert"]["fast"] is False
    assert int8_paths(set(), "x86_64")["isa"] == "unknown"


def test_saturation_bound_is_the_int16_limit():
    assert 2 * 255 * SATURATION_FREE_WEIGHT <= 32767 < 2 * 255 * (SATURATION_FREE_WEIGHT + 1)


def _row(fmt, p50):
    return result_row(f"v/{fmt}", p50=p50)


def test_speed_note_faster_tie_and_slower_with_why():
    fp32 = _row("tflite-fp32", 0.149)
    fast = speed_note(_row("tflite-int8", 0.040), fp32, [], int8_paths(VNNI, "x86_64"), 1.25)
    assert fast.endswith("3.7x faster than fp32 on this CPU (XNNPACK VNNI int8 kernels)")
    rows = [fp32, _row("tflite-int8", 0.210), _row("tflite-dynamic", 0.166)]
    slow = speed_note(rows[1], fp32, rows, int8_paths(AVX2, "x86_64"), 1.25)
    assert "slower than fp32" in slow and "no 8-bit dot-product instructions" in slow
    assert "ship tflite-fp32 (0.149 ms)" in slow
    tie = speed_note(_row("onnx-int8", 0.130), _row("onnx-fp32", 0.141), [], int8_paths(AVX2, "x86_64"), 1.25)
    assert "no faster than fp32" in tie
    assert speed_note(_row("onnx-int8", 0.1), result_row("v/onnx-fp32", latency={}), [], {}, 1.25) is None


def test_speed_note_names_the_files_own_reason_first():
    """A property of the file (here unfused Q/DQ) explains a slow int8 row on any CPU, VNNI or not."""
    from edgepack.explain.kernels import KernelFacts

    facts = KernelFacts("onnxruntime 1.32.0", {"Conv": 3}, unfused=["conv1", "conv2", "conv3"])
    row = result_row("v/onnx-int8", p50=0.300, kernel_facts=facts)
    for flags in (VNNI, AVX2):
        note = speed_note(row, _row("onnx-fp32", 0.100), [], int8_paths(flags, "x86_64"), 1.25)
        assert "slower than fp32" in note and "noise" not in note
        assert ("the file runs 3 Conv/MatMul nodes left in float32 between unfused Q/DQ pairs "
                "(on every CPU)") in note
    assert "no 8-bit dot-product" in note  # AVX2: the CPU's reason follows the file's
