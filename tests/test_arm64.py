"""The arm64 target: result comparison, the emulated CPU's files, errors; one emulated run (slow)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_INT8_GATE, result_row, results_of

from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.report import targets as report_targets
from edgepack.target import TARGETS, Budget, arm64, arm64_check, check_budget


def test_compare_gives_accuracy_agreement_and_largest_difference():
    native = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]], np.float32)
    emulated = native.copy()
    emulated[2] = [0.45, 0.55]  # one top-1 flips; largest difference 0.25
    f = arm64_check.compare(native, emulated, np.array([1, 1, 0, 0]))
    assert f["num_images"] == 4 and f["agreement"] == 0.75 and not f["identical"]
    assert f["max_abs_diff"] == pytest.approx(0.25)
    assert f["native_accuracy"] == 0.5 and f["accuracy"] == 0.25
    same = arm64_check.compare(native, native.copy(), None)
    assert same["identical"] and same["agreement"] == 1.0 and same["max_abs_diff"] == 0.0
    assert "accuracy" not in same  # no labels: agreement only


@pytest.mark.parametrize("emulated, labels, message", [
    (np.zeros((3, 2)), None, "differ in shape"),
    (np.zeros((4, 2)), np.zeros(3), "3 labels for 4 images"),
])
def test_compare_refuses_mismatched_inputs(emulated, labels, message):
    with pytest.raises(ValueError, match=message):
        arm64_check.compare(np.zeros((4, 2)), emulated, labels)


def test_failed_files_become_rows():
    bad = arm64_check._row({"file": "a.tflite", "ok": False, "error": "ModelFileError: truncated"},
                           None, None)
    assert not bad.runs and bad.error == "ModelFileError: truncated"
    guest = {"file": "b.onnx", "ok": True, "runtime": "onnxruntime", "emulated": np.eye(2, dtype=np.float32)}
    no_native = arm64_check._row(guest, None, None)
    assert no_native.runs and "does not load on this machine" in no_native.error
    ok = arm64_check._row(guest, np.eye(2, dtype=np.float32), np.array([0, 1]))
    assert ok.identical and ok.accuracy == 1.0 and ok.error is None


@pytest.mark.parametrize("name", list(arm64.CPUS))
def test_cpuinfo_is_an_arm_file_with_one_block_per_processor(name):
    cpu = arm64.CPUS[name]
    text = arm64.cpuinfo_text(cpu, 3)
    blocks = [b for b in text.split("\n\n") if b]
    assert len(blocks) == 3 and [b.splitlines()[0] for b in blocks] == [f"processor\t: {i}" for i in range(3)]
    for b in blocks:
        fields = dict(line.split(":", 1) for line in b.splitlines())
        assert fields["CPU implementer\t"].strip() == "0x41" and fields["CPU part\t"].strip() == cpu.part
        assert fields["Features\t"].split()[:2] == ["fp", "asimd"]
    assert arm64.cpuinfo_text(cpu, 0).count("processor") == 1


def test_cpus_differ_in_their_int8_features():
    feats = {k: set(c.features.split()) for k, c in arm64.CPUS.items()}
    assert {"asimddp", "i8mm"} <= feats["max"]
    assert "asimddp" in feats["cortex-a76"] and "i8mm" not in feats["cortex-a76"]
    assert "asimddp" not in feats["cortex-a72"]


def test_guest_runs_under_qemu_with_its_own_cpuinfo(tmp_path):
    cmd = arm64.guest_command(tmp_path / "root", arm64.CPUS["cortex-a72"], ["--versions"],
                              tmp_path / "cpuinfo")
    assert cmd[:2] == ["unshare", "--mount"]
    assert "mount --bind" in cmd[cmd.index("-c") + 1] and str(tmp_path / "cpuinfo") in cmd
    q = cmd.index("qemu-aarch64")
    assert cmd[q:q + 5] == ["qemu-aarch64", "-cpu", "cortex-a72", "-L", str(tmp_path / "root")]
    assert cmd[-2:] == [str(tmp_path / arm64.GUEST.name), "--versions"]


def test_private_apt_lists_leave_the_machine_alone(tmp_path):
    opts = arm64._apt_options(tmp_path)
    joined = " ".join(opts)
    assert "APT::Architecture=arm64" in joined and f"Dir::State::Lists={tmp_path / 'lists'}" in joined
    assert f"Dir::State::status={tmp_path / 'status'}" in joined  # not dpkg's own status file
    assert arm64.DEBIAN_SUITE in (tmp_path / "sources.list").read_text()


def test_missing_tool_is_one_line_naming_the_package(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "qemu-aarch64" else "/bin/" + name)
    with pytest.raises(EdgepackError, match=r"needs qemu-aarch64.*apt-get install qemu-user"):
        arm64.require_tools()


def test_missing_debian_keyring_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(arm64, "require_tools", lambda *a: None)
    monkeypatch.setattr(arm64, "DEBIAN_KEYRING", tmp_path / "none.gpg")
    with pytest.raises(EdgepackError, match="apt-get install debian-archive-keyring"):
        arm64.build_root(tmp_path / "root")
    assert list(tmp_path.iterdir()) == []


def test_cli_without_qemu_prints_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    np.save(tmp_path / "x.npy", np.zeros((2, 32, 32, 3), np.uint8))
    code = main(["target-check", "--target", "arm64", str(model), "--images", str(tmp_path / "x.npy"),
                 "--root", str(tmp_path / "root"), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "apt-get install qemu-user" in err
    assert not (tmp_path / "root").exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--labels", "y.npy"], "--labels needs --images"),
    (["--images", "bad.npy"], "not a readable .npy file"),
    (["--images", "f.npy"], "images must be uint8"),
])
def test_cli_bad_images_are_one_line(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    Path("m.tflite").write_bytes(b"x")
    Path("bad.npy").write_text("not numpy")
    np.save("f.npy", np.zeros((2, 32, 32, 3), np.float32))
    assert main(["target-check", "--target", "arm64", "m.tflite", *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_model_files_take_files_and_folders(tmp_path):
    for name in ("b.tflite", "a.onnx", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in arm64_check.model_files([tmp_path])] == ["a.onnx", "b.tflite"]
    with pytest.raises(EdgepackError, match="not an exported"):
        arm64_check.model_files([tmp_path / "notes.txt"])
    with pytest.raises(EdgepackError, match="no .onnx or .tflite"):
        arm64_check.model_files([tmp_path / "empty"]) if (tmp_path / "empty").mkdir() is None else None


@pytest.mark.parametrize("script, timeout, message", [
    ("echo 'arm64: a.onnx checked' >&2; echo Segfault >&2; exit 139", None, "failed (exit 139: Segfault)"),
    ("sleep 30", 0.5, "took over 0 s: pass fewer images"),
    ("kill -SEGV $$", 60, "failed (exit -11: no output)"),  # a crash within the time limit is no timeout
])
def test_guest_failure_and_timeout_are_one_line(tmp_path, monkeypatch, script, timeout, message):
    monkeypatch.setattr(arm64, "guest_command", lambda *a: ["sh", "-c", script])
    seen = []
    with pytest.raises(EdgepackError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        arm64.run_guest(tmp_path, [], timeout=timeout, progress=seen.append)
    assert "\n" not in str(e.value)
    assert seen == (["arm64: a.onnx checked"] if "a.onnx" in script else [])


def test_failed_build_leaves_no_root(tmp_path, monkeypatch):
    monkeypatch.setattr(arm64, "require_tools", lambda *a: None)
    monkeypatch.setattr(arm64, "require_keyring", lambda: None)

    def fail(*a):
        raise EdgepackError("arm64 root: apt-get update failed")

    monkeypatch.setattr(arm64, "_debian_python", fail)
    with pytest.raises(EdgepackError, match="apt-get update failed"):
        arm64.build_root(tmp_path / "root", progress=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_arm64_is_a_registered_accuracy_only_target(monkeypatch):
    t = TARGETS["arm64"]
    assert t.check is arm64_check.check and not t.budgets and "not measured" in t.ram + t.flash
    assert t.runs(Path("a.onnx")) is None and t.runs(Path("b.tflite")) is None
    assert ".h5 file" in t.runs(Path("m.h5"))
    fig = arm64_check.check(Path("m.h5"), np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1), None)
    assert not fig.runs and fig.verdict.startswith("not runnable") and fig.ram_bytes is None
    with pytest.raises(EdgepackError, match="budgets of a device"):
        check_budget("arm64", Budget(65536, None))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EdgepackError, match="the arm64 target needs"):
        check_budget("arm64", Budget())


def test_report_section_has_accuracy_columns_only():
    ok = arm64_check.Figures("arm64", runs=True, accuracy=0.7, agreement=0.99, num_images=100)
    rows = [result_row("x/onnx-int8", 0.71, target=Budget().judge(ok)),
            result_row("x/bad", 0.7, target=arm64_check.unrunnable("arm64", "fails on aarch64: boom"))]
    res = results_of(rows)
    report_targets.summarise(res, TARGETS["arm64"], Budget())
    assert res.target.runnable == res.target.fitting == ["x/onnx-int8"]
    lines, (title, headers, table) = report_targets.section(res)
    assert title == "Target arm64" and not any("KiB" in h for h in headers) and "latency" in lines[1]
    assert table[0][1:4] == ["70.00", "71.00", "99.00"]
    assert table[1][-1] == "not runnable: fails on aarch64: boom"


@pytest.fixture(scope="module")
def qemu():
    """qemu-aarch64, or a skip (locally) / failure (CI) naming the package."""
    if shutil.which("qemu-aarch64") is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-aarch64 not installed: apt-get install qemu-user")
        pytest.skip("qemu-aarch64 not installed (apt-get install qemu-user)")


@pytest.mark.slow
def test_int8_files_run_on_emulated_arm64_engines(qemu, tiny_run, tiny_archive, tmp_path):
    from edgepack.data import load_data
    from edgepack.export import export

    ds = load_data(tiny_archive)
    s = export(tiny_run, ["tflite-int8", "onnx-int8"], tmp_path / "x", options=NO_INT8_GATE,
               check_images=20, ds=ds)
    files = [tmp_path / "x" / f["file"] for f in s["formats"].values()]
    result = arm64_check.evaluate(files, ds.x_test, ds.y_test, progress=lambda s: None)
    assert result.guest["machine"] == "aarch64" and result.guest["onnxruntime"] == arm64.WHEELS["onnxruntime"]
    assert result.guest["ai_edge_litert"] == arm64.WHEELS["ai-edge-litert"]
    assert {r.runtime for r in result.files} == {"onnxruntime", "litert"}
    for r in result.files:
        assert r.runs and r.error is None and r.num_images == len(ds.x_test), r
        assert r.max_abs_diff <= 2 / 256  # the same file: at most a quantum or two apart
        assert 0 <= r.accuracy <= 1 and r.agreement >= 0.9
    arm64_check.write_json(result, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["files"][0]["runs"]
