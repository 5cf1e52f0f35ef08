"""Latencies from users' devices: `edgepack bench --json` (schema, no TensorFlow) and
`edgepack compare --device-results` (matched by sha256, reported apart, never ranked; bad files are
one-line errors that leave nothing behind)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from edgepack.bench import KIND, SCHEMA_VERSION
from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.report import CompareOptions, compare, devices, read_results
from edgepack.report.derived import recommend
from edgepack.runtime.cpu import CPUID_X86, seen_flags

# Runs the bench CLI in a fresh process, then says on stderr whether TensorFlow got imported.
_BENCH = """
import sys
from edgepack.cli import main
code = main(sys.argv[1:])
tf = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras')]
print(f"exit {code} tensorflow {bool(tf)}", file=sys.stderr)
"""


@pytest.fixture(scope="module")
def bench_doc(tiny_exports) -> dict:
    files = [str(tiny_exports["tflite-int8"]), str(tiny_exports["onnx-fp32"])]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", _BENCH, "bench", *files, "--runs", "10", "--warmup", "1",
                           "--import-repeats", "1", "--json"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.stderr.strip().splitlines()[-1] == "exit 0 tensorflow False", done.stderr
    return json.loads(done.stdout)  # stdout is the JSON document alone (progress went to stderr)


def test_bench_json_schema(bench_doc, tiny_exports):
    from edgepack.rundir import sha256_file

    assert bench_doc["schema_version"] == SCHEMA_VERSION and bench_doc["kind"] == KIND
    dev = bench_doc["device"]
    assert {"cpu", "os", "system", "machine", "python", "versions"} <= set(dev)
    assert {"model", "isa_flags", "int8_paths", "flags_differ"} <= set(dev["cpu"])
    assert {"onnxruntime", "ai-edge-litert", "numpy", "edgepack"} <= set(dev["versions"])
    assert [f["format"] for f in bench_doc["files"]] == ["tflite-int8", "onnx-fp32"]
    for f, fmt in zip(bench_doc["files"], ("tflite-int8", "onnx-fp32"), strict=True):
        assert f["sha256"] == sha256_file(tiny_exports[fmt]) and f["name"] == tiny_exports[fmt].name
        assert f["status"] == "ok" and f["threads"] == 1 and f["kernels"] == "default"
        t = f["edgepack"]
        assert 0 < t["low_ms"] <= t["p50_ms"] <= t["high_ms"] and len(t["round_p50_ms"]) == t["rounds"]
    assert isinstance(devices.read_all([]), list)


def test_the_processs_own_view_of_flags_wins_when_cpuinfo_disagrees():
    """An emulated CPU (qemu -cpu Haswell on an AVX-512 host): the kernel's CPU listing names the host's
    flags, the process sees the emulated ones, which the engines use. Given flags only: the test CPU is
    never read."""
    host = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8", "sse4_2"}
    assert seen_flags(host, {"avx2", "fma"}) == ({"avx2", "fma"}, True)
    same = {f for f in host if f in CPUID_X86.values()}
    assert seen_flags(host, same) == (host, False)
    assert seen_flags({"asimd", "asimddp"}, set()) == ({"asimd", "asimddp"}, False)  # ARM: not compared
    assert seen_flags(host, None) == (host, False)


def _write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _bad_docs(doc: dict) -> dict[str, tuple[object, str]]:
    nan = copy.deepcopy(doc)
    nan["files"][0]["edgepack"]["p50_ms"] = float("nan")
    missing = copy.deepcopy(doc)
    del missing["files"][0]["sha256"]
    no_cpu = copy.deepcopy(doc)
    del no_cpu["device"]["cpu"]
    return {
        "notjson": ("{not json", "is not JSON"),
        "schema": ({**doc, "schema_version": 99}, "has schema_version 99, this edgepack reads 1"),
        "kind": ({**doc, "kind": "edgepack-compare"}, "is not an `edgepack bench --json` result"),
        "nan": (nan, "files[0].edgepack.p50_ms: must be a finite number > 0, got nan"),
        "missing": (missing, "files[0].sha256: missing (required)"),
        "nocpu": (no_cpu, "device.cpu: missing (required)"),
    }


def test_bad_device_files_are_one_line_errors(bench_doc, tmp_path):
    devices.read(_write(tmp_path / "ok.json", bench_doc))
    for name, (doc, message) in _bad_docs(bench_doc).items():
        path = _write(tmp_path / f"{name}.json", doc)
        with pytest.raises(EdgepackError) as e:
            devices.read(path)
        assert str(e.value).startswith(f"--device-results {path}") and message in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(EdgepackError, match="does not exist"):
        devices.read(tmp_path / "absent.json")


def test_compare_reports_device_results_apart(bench_doc, tiny_exports, tiny_archive, tmp_path):
    """Device figures are matched by sha256 and reported per device; the rows, x faster and the
    recommendation stay this machine's even when the device's figures are far faster."""
    doc = copy.deepcopy(bench_doc)
    doc["device"]["cpu"].update(model="Board CPU", isa_flags=["NEON", "ARM dot-product"])
    for f in doc["files"]:
        f["edgepack"].update(p50_ms=1e-4, low_ms=1e-4, high_ms=1e-4)
    second = copy.deepcopy(doc)
    second["files"] = second["files"][:1]
    second["device"]["cpu"]["model"] = "Other board"
    dev1, dev2 = _write(tmp_path / "board.json", doc), _write(tmp_path / "other.json", second)
    out = tmp_path / "report"
    opts = CompareOptions(runs=10, warmup=1, predict_runs=3, throughput_runs=3, max_drop=100.0,
                          device_results=(str(dev1), str(dev2)))
    results = compare([tiny_exports["tflite-int8"].parent], out, data_path=tiny_archive, options=opts)
    by_id = {r.id: r for r in results.rows}
    got = results.device_results
    assert [d["source"] for d in got] == [str(dev1), str(dev2)]
    assert got[0]["label"].startswith("Board CPU (NEON, ARM dot-product)")
    assert "onnxruntime" in got[0]["label"]
    assert [f["id"] for f in got[0]["files"]] == ["baseline/tflite-int8", "baseline/onnx-fp32"]
    for f in got[0]["files"]:
        assert f["p50_ms"] == 1e-4 and f["sha256"] == by_id[f["id"]].model_sha256
    assert len(got[1]["files"]) == 1
    # the ranking reads the rows alone: same pick as from the rows, no device figure in any row
    assert results.baseline and results.recommended == recommend(results.rows, 100.0).id
    assert len(results.cpu_groups) == 1
    assert all(r.latency.threads_1.p50_ms > 1e-3 for r in results.rows if r.kind == "file")
    md = (out / "report.md").read_text()
    assert "## Device results" in md and "### Device 1: Board CPU" in md and "### Device 2: Other board" in md
    assert "0.000 (0.000-0.000)" in md
    assert "<h2>Device results</h2>" in (out / "report.html").read_text()
    assert read_results(out / "results.json").device_results == got
    # without the option, no section
    plain = tmp_path / "plain"
    compare([tiny_exports["tflite-int8"]], plain, data_path=tiny_archive,
            options=CompareOptions(latency=False))
    assert "Device results" not in (plain / "report.md").read_text()


def test_compare_refuses_bad_device_files_before_writing(bench_doc, tiny_exports, tiny_archive, tmp_path,
                                                         capsys):
    other = copy.deepcopy(bench_doc)
    other["files"][0]["sha256"] = "ab" * 32  # measured on a file of another export
    unmatched = "tflite-int8.tflite (sha256 abababababab...) is none of the compared files"
    cases = {"other-files.json": (other, unmatched),
             **{f"{k}.json": v for k, v in _bad_docs(bench_doc).items() if k in ("notjson", "schema", "nan")}}
    for name, (doc, message) in cases.items():
        path = _write(tmp_path / name, doc)
        out = tmp_path / f"out-{name}"
        code = main(["compare", str(tiny_exports["tflite-int8"]), str(tiny_exports["onnx-fp32"]), "--out",
                     str(out), "--data", str(tiny_archive), "--no-latency", "--device-results", str(path)])
        out_text, err = capsys.readouterr()
        assert "test images" not in out_text, name  # refused before the data was read
        assert code == 1 and err.startswith(f"edgepack: error: --device-results {path}"), err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists() and not list(tmp_path.glob(f".out-{name}*")), name  # no folder, no lock


def test_cli_starts_without_the_toolchain_extras():
    """The runtime-only install has no pydantic: every command still registers (bench must run there)."""
    code = ("import sys; sys.modules['pydantic'] = None; from edgepack.cli import build_parser; "
            "build_parser().parse_args(['bench', 'm.onnx', '--json'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
