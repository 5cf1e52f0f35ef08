"""Deployment targets: the registry, budget parsing, fit and none-fits logic (no model files needed)."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from conftest import result_row, results_of

from edgepack.errors import EdgepackError
from edgepack.report import targets as report_targets
from edgepack.target import TARGETS, Budget, Figures, Target, check_budget, get, parse_bytes
from edgepack.target.figures import unrunnable


def test_registry_declares_every_target_the_same_way():
    assert list(TARGETS) == ["host", "tflm", "arm64", "browser"]
    for name, t in TARGETS.items():
        assert isinstance(t, Target) and t.name == name and t.summary and t.ram and t.flash
        with pytest.raises(dataclasses.FrozenInstanceError):
            t.name = "x"
    assert TARGETS["host"].check is None and not TARGETS["host"].budgets  # today's behaviour
    assert TARGETS["tflm"].check is not None and TARGETS["tflm"].budgets and TARGETS["tflm"].kernels == "tflm"
    with pytest.raises(EdgepackError, match="unknown target 'esp32': choose one of host, tflm, arm64"):
        get("esp32")


@pytest.mark.parametrize("text, want", [("64KiB", 65536), ("256KiB", 262144), ("1MiB", 1 << 20),
                                        ("256kB", 256000), ("2MB", 2_000_000), ("100B", 100)])
def test_sizes_parse(text, want):
    assert parse_bytes(text) == want


@pytest.mark.parametrize("text", ["64 kB", "-1", "abc", "0", "0KiB", "1.5MiB", "64kb", "64", "KiB", " 64KiB",
                                  "64KiB ", "64Kib"])
def test_malformed_sizes_are_one_line_errors(text):
    with pytest.raises(EdgepackError) as e:
        parse_bytes(text, "--ram")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--ram {text!r} is not a size") and "e.g. 64KiB" in msg


def test_budgets_need_a_device_target():
    check_budget("tflm", Budget(65536, None))
    check_budget("host", Budget())
    with pytest.raises(EdgepackError, match="--ram/--flash are budgets of a device: add --target tflm"):
        check_budget("host", Budget(65536, None))


def test_tflm_needs_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite_micro", None)
    with pytest.raises(EdgepackError, match=r"pip install 'edgepack\[tflm\]'"):
        check_budget("tflm", Budget())


def _fig(ram, flash, cram=None, cflash=None) -> Figures:
    return Figures("tflm", runs=True, ram_bytes=ram, flash_bytes=flash, compressed_ram_bytes=cram,
                   compressed_flash_bytes=cflash, accuracy=0.7, agreement=1.0)


def test_judge_fits_as_stored_compressed_or_not():
    b = Budget.parse("64KiB", "256KiB")
    ok = b.judge(_fig(40_740, 134_866))
    assert ok.fits and ok.fits_as == "stored" and ok.verdict.startswith("fits: RAM 40,740 B <= 65,536 B")
    big = b.judge(_fig(40_740, 300_000))
    assert big.fits is False and set(big.over) == {"flash"} and "flash 300,000 B > 262,144 B" in big.verdict
    assert big.verdict.startswith("does not fit")
    packed = b.judge(_fig(40_740, 300_000, cram=60_000, cflash=90_000))
    assert packed.fits and packed.fits_as == "compressed" and packed.verdict.startswith("fits after")
    free = Budget().judge(_fig(10**9, 10**9))
    assert free.fits and free.verdict == "runs (no budget given)"
    no = unrunnable("tflm", "float ops CONV_2D")
    assert b.judge(no) == no and no.fits is False and no.verdict == "not runnable: float ops CONV_2D"


def _results(budget: Budget, figs: dict[str, Figures | None]):
    rows = [result_row(i, target=None if f is None else budget.judge(f)) for i, f in figs.items()]
    results = results_of(rows)
    report_targets.summarise(results, TARGETS["tflm"], budget)
    return results


def test_only_fitting_files_may_be_picked():
    b = Budget.parse("64KiB", "256KiB")
    res = _results(b, {"a/tflite-int8": _fig(40_000, 130_000), "b/tflite-int8": _fig(90_000, 130_000),
                       "a/tflite-fp32": unrunnable("tflm", "float ops CONV_2D")})
    t = res.target
    assert t.runnable == ["a/tflite-int8", "b/tflite-int8"] and t.fitting == ["a/tflite-int8"]
    assert not t.none_fit and t.closest is None and report_targets.none_fit_line(res) is None
    may = report_targets.allowed(res)
    assert [r.id for r in res.rows if may(r)] == ["a/tflite-int8"]


def test_none_fits_names_the_closest_in_one_line():
    b = Budget.parse("32KiB", "100KiB")
    res = _results(b, {"far": _fig(40_000, 300_000), "near": _fig(40_000, 110_000),
                       "float": unrunnable("tflm", "float ops CONV_2D")})
    assert res.target.none_fit and res.target.closest == "near"
    line = report_targets.none_fit_line(res)
    assert "\n" not in line and line.startswith("no file fits tflm within RAM 32,768 B and flash 102,400 B")
    assert "closest: near (RAM 40,000 B > 32,768 B; flash 110,000 B > 102,400 B)" in line
    nothing = _results(b, {"float": unrunnable("tflm", "float ops CONV_2D")})
    assert nothing.target.closest is None
    assert report_targets.none_fit_line(nothing).startswith("no file runs on tflm")
    assert report_targets.EXIT_NONE_FITS == 3


def test_host_target_adds_nothing():
    res = results_of([result_row("a")])
    report_targets.summarise(res, TARGETS["host"], Budget())
    assert res.target is None and report_targets.section(res) is None
    assert report_targets.allowed(res)(res.rows[0]) and report_targets.none_fit_line(res) is None


def test_pipeline_settings_check_target_and_budgets():
    from edgepack.settings import load_settings

    c = load_settings(None, False, {"compare": {"target": "tflm", "ram": "64KiB", "flash": "1MB"}}).compare
    assert (c.target, Budget.parse(c.ram, c.flash)) == ("tflm", Budget(65536, 1_000_000))
    assert load_settings().compare.target == "host"
    for bad, message in (({"target": "tflm", "ram": "64 kB"}, "compare.ram: '64 kB' is not a size"),
                         ({"ram": "64KiB"}, "compare.ram: --ram/--flash are budgets of a device"),
                         ({"target": "esp32"}, "compare.target: must be host or tflm")):
        with pytest.raises(EdgepackError, match=message):
            load_settings(None, False, {"compare": bad})


def test_a_target_without_memory_figures_still_picks_only_files_it_runs(tmp_path):
    from edgepack.target import fits

    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"not read: the browser runs .onnx files only")
    assert TARGETS["browser"].runs(tflite) is not None
    assert not fits("browser", Budget(None, None), tflite)
