"""TFLM deployment: look-up-table weight compression, the C array and main.cc, `export --target tflm`,
golden vectors on TFLM. A real clustered model made small (cluster-8 of the tiny run, 1 epoch).

The C++ sources are checked without TFLM's headers (not installed here): model_data.cc is compiled with
the host's g++ beside a test main that writes the array back out; main.cc is parsed, not compiled."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_INT8_GATE

from edgepack.errors import EdgepackError
from edgepack.runtime import golden

tflite_micro = pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, tiny_archive, tiny_run) -> Path:
    """A real cluster-8 run folder made from the tiny run (1 epoch of fine-tuning)."""
    from edgepack.compress import compress

    root = tmp_path_factory.mktemp("tflm-cluster")
    return compress(tiny_run, "cluster", root / "cluster-8", data_path=tiny_archive, variant="cluster-8",
                    params={"clusters": 8, "epochs": 1, "batch_size": 16, "learning_rate": 1e-4})


@pytest.fixture(scope="module")
def int8_files(tmp_path_factory, tiny_archive, tiny_run, clustered) -> dict[str, Path]:
    """tflite-int8 files of the clustered and the plain tiny model."""
    from edgepack.export import export

    root = tmp_path_factory.mktemp("tflm-int8")
    out = {}
    for name, run in (("cluster", clustered), ("plain", tiny_run)):
        export(run, "tflite-int8", root / name, data_path=tiny_archive, check_images=20, options=NO_INT8_GATE)
        out[name] = root / name / "tflite-int8.tflite"
    return out


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, tiny_archive, clustered) -> Path:
    """`edgepack export --target tflm` of the clustered model, through the CLI."""
    from edgepack.cli import main

    out = tmp_path_factory.mktemp("tflm-deploy") / "pc"
    args = ["export", "--model", str(clustered), "--target", "tflm", "--data", str(tiny_archive),
            "--check-images", "20", "--out", str(out)]
    args += [a for k, v in NO_INT8_GATE.items() for a in ("--option", f"{k}={v}")]
    assert main(args) == 0
    return out


def tflm_outputs(model: bytes, images: np.ndarray) -> np.ndarray:
    """Raw output tensors of `model` on TFLM's interpreter (the engine itself, not edgepack's runtime)."""
    from tflite_micro import runtime

    it = runtime.Interpreter.from_bytes(model)
    out = []
    for x in images:
        it.set_input(x[None], 0)
        it.invoke()
        out.append(np.array(it.get_output(0)))
    return np.concatenate(out)


def file_ops(model: bytes) -> set[str]:
    """Operator names of a .tflite, read with TFLM's own model editor (independent of edgepack)."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = model_editor.read(model)
    return {op.custom_code or names[op.opcode] for op in m.subgraphs[0].operators}


# --- look-up-table compression


@pytest.mark.parametrize(("values", "bits"), [(1, 1), (2, 1), (3, 2), (8, 3), (9, 4), (16, 4), (128, 7)])
def test_index_bits(values, bits):
    from edgepack.target.tflm_lut import index_bits

    assert index_bits(values) == bits


def test_plan_counts_values_per_channel():
    from edgepack.target.tflm_lut import plan_tensor

    rng = np.random.default_rng(0)
    # 64 channels of 512 weights; each channel has its own 8 values: 3 bits, though 512 values in all
    table = rng.choice(np.arange(-127, 128), size=(64, 8), replace=True)
    w = np.stack([rng.choice(t, 512) for t in table]).astype(np.int8)
    plan = plan_tensor(4, "k", w, 0)
    assert plan.bits == 3 and plan.values <= 8 and plan.axis == 0 and plan.int8_bytes == w.size
    assert plan_tensor(4, "k", rng.integers(-128, 128, (64, 512), dtype=np.int8), 0) is None  # 8 bits
    assert plan_tensor(4, "small", w[:2, :16], 0) is None  # would not save its overhead


def test_lut_keeps_predictions_and_shrinks(int8_files, tiny_archive):
    from edgepack.data import load_data
    from edgepack.target.tflm_lut import lut_compress

    raw = int8_files["cluster"].read_bytes()
    result = lut_compress(raw)
    assert result.bytes_before == len(raw) and result.bytes_after == len(result.model) < len(raw)
    assert result.tensors and all(1 <= t.bits <= 3 for t in result.tensors)  # 8 clusters: <= 3 bits
    assert result.bits == {t.index: t.bits for t in result.tensors}
    assert "TFLM_DECODE" in file_ops(result.model) and "TFLM_DECODE" not in file_ops(raw)
    images = load_data(tiny_archive).x_test[:20]  # uint8 io: pixels are the input tensor
    np.testing.assert_array_equal(tflm_outputs(result.model, images), tflm_outputs(raw, images))


@pytest.fixture(scope="module")
def cqat_int8(tmp_path_factory, tiny_archive, clustered) -> Path:
    """tflite-int8 of a cluster-preserving QAT run: QAT writes the dense kernels quantized per tensor."""
    from edgepack.compress import compress
    from edgepack.export import export

    root = tmp_path_factory.mktemp("tflm-cqat")
    run = compress(clustered, "cqat", root / "cqat", data_path=tiny_archive, variant="cluster-8+cqat",
                   params={"epochs": 1, "batch_size": 16, "learning_rate": 1e-4})
    export(run, "tflite-int8", root / "x", data_path=tiny_archive, check_images=20, options=NO_INT8_GATE)
    return root / "x" / "tflite-int8.tflite"


def test_lut_tables_follow_each_tensors_quantization(cqat_int8):
    """Per-tensor tables for per-tensor-quantized kernels, per-channel ones otherwise: TFLM's outputs stay
    identical on any input (per-channel tables on a per-tensor dense kernel changed them by 3 quanta)."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    from edgepack.target.tflm_lut import lut_compress

    raw = cqat_int8.read_bytes()
    result = lut_compress(raw)
    assert {t.axis for t in result.tensors} == {None, 0}  # the QAT dense kernels and the convs
    from tflite_micro import runtime

    shape = runtime.Interpreter.from_bytes(raw).get_input_details(0)["shape"]
    images = np.random.default_rng(0).integers(0, 256, (40, *shape[1:]), dtype=np.uint8)  # uint8 input
    np.testing.assert_array_equal(tflm_outputs(result.model, images), tflm_outputs(raw, images))
    assert not any(t.name for t in model_editor.read(result.model).subgraphs[0].tensors)  # names stripped


def test_lut_refuses_unclustered_and_non_models(int8_files):
    from edgepack.target.tflm_lut import lut_compress

    with pytest.raises(EdgepackError, match="cluster the model first") as e:
        lut_compress(int8_files["plain"].read_bytes())
    assert "\n" not in str(e.value)
    with pytest.raises(EdgepackError, match="not a .tflite model"):
        lut_compress(b"not a flatbuffer at all")


def test_lut_turns_a_compressor_refusal_into_one_line(int8_files, monkeypatch):
    import importlib

    from tflite_micro.tensorflow.lite.micro.compression.compressor import CompressionError

    from edgepack.target.tflm_lut import lut_compress

    module = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.compress")

    def refuse(model, specs):
        raise CompressionError("tensor 'w' must stay constant; read by PAD\nmore detail")

    monkeypatch.setattr(module, "compress", refuse)
    with pytest.raises(EdgepackError, match=r"^TFLM's compressor refused the model \(tensor 'w' must stay "
                                            r"constant; read by PAD\): keep the int8 file$"):
        lut_compress(int8_files["cluster"].read_bytes())


# --- C++ sources


def test_model_data_compiles_to_the_file_bytes_aligned(deployed, tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no host C++ compiler")
    dump = tmp_path / "dump.cc"
    dump.write_text("""#include <cstdint>
#include <cstdio>
#include "model_data.h"
int main(int argc, char** argv) {
  std::FILE* f = std::fopen(argv[1], "wb");
  std::fwrite(g_model_data, 1, g_model_data_len, f);
  std::fclose(f);
  std::printf("%u %u %d %s", static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(g_model_data) % 16),
              static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(g_sample_input) % 16),
              kNumClasses, kClassNames[kSampleExpectedClass]);
  return 0;
}
""")
    exe = tmp_path / "dump"
    subprocess.run([gxx, "-std=c++17", "-Wall", "-Werror", f"-I{deployed}", str(deployed / "model_data.cc"),
                    str(dump), "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe), str(tmp_path / "model.bin")], check=True, capture_output=True, text=True)
    align, sample_align, classes, name = out.stdout.split()
    assert (tmp_path / "model.bin").read_bytes() == (deployed / "model.tflite").read_bytes()
    assert align == "0" and sample_align == "0" and int(classes) == 10 and name in golden.read_golden(
        golden.golden_path(deployed / "model.tflite"))["meta"]["class_names"]


def test_main_registers_exactly_the_files_ops(deployed):
    text = (deployed / "main.cc").read_text()
    calls = re.findall(r"resolver\.(Add\w+)\(\)", text)
    count = int(re.search(r"constexpr int kOpCount = (\d+);", text).group(1))
    assert "MicroMutableOpResolver<kOpCount>" in text and count == len(calls) == len(set(calls))
    from edgepack.target.tflm_c import RESOLVER_CALLS

    ops = file_ops((deployed / "model.tflite").read_bytes())
    assert set(calls) == {RESOLVER_CALLS[op] for op in ops}
    assert "AddDecode" in calls
    assert {"AddConv2D", "AddMaxPool2D", "AddFullyConnected", "AddSoftmax"} <= set(calls)


def test_header_carries_arena_and_input_quantization(deployed):
    import json

    record = json.loads((deployed / "tflm.json").read_text())
    h = (deployed / "model_data.h").read_text()
    assert f"kTensorArenaSize = {record['arena']['kTensorArenaSize']};" in h
    assert record["arena"]["kTensorArenaSize"] >= record["arena"]["measured_bytes"] * 1.25
    assert f"kInputZeroPoint = {record['input']['zero_point']};" in h
    scale = float(re.search(r"kInputScale = ([0-9.e+-]+)f;", h).group(1))
    assert scale == pytest.approx(record["input"]["scale"], rel=1e-7)
    assert record["lut"]["applied"] and record["bytes"]["deployed"] < record["bytes"]["int8"]
    assert record["tflm_check"]["identical_to_int8"]


def test_resolver_refuses_unknown_op():
    from edgepack.target.tflm_c import resolver_calls

    assert resolver_calls(["CONV_2D", "TFLM_DECODE"]) == ["AddConv2D", "AddDecode"]
    with pytest.raises(EdgepackError, match="operator NON_MAX_SUPPRESSION_V5 has no MicroMutableOpResolver"):
        resolver_calls(["CONV_2D", "NON_MAX_SUPPRESSION_V5"])


# --- golden vectors on TFLM


def test_golden_vectors_pass_on_tflm_and_a_tampered_one_fails(deployed, tmp_path, capsys):
    from edgepack.cli import main

    model = deployed / "model.tflite"
    g = golden.read_golden(golden.golden_path(model))
    assert g["meta"]["kernels"] == "tflm" and len(g["images"]) == 16
    assert main(["verify", str(model), "--kernels", "tflm"]) == 0
    assert capsys.readouterr().out.startswith("PASS model.tflite: 16 golden images")
    expected = g["expected"].copy()
    expected[3] = np.eye(10)[(expected[3].argmax() + 1) % 10]  # image 3: certain of another class
    tampered = golden.write_golden(tmp_path / "tampered.golden.npz", g["images"], g["labels"], expected,
                                   g["meta"])
    assert main(["verify", str(model), str(tampered), "--kernels", "tflm"]) == 1
    assert capsys.readouterr().out.startswith("FAIL model.tflite: image 3 ")


def test_lut_file_runs_only_on_tflm(deployed, tmp_path, capsys):
    from edgepack.cli import main
    from edgepack.runtime.metadata import read_sidecar

    model = deployed / "model.tflite"
    meta = read_sidecar(model)
    assert meta.runs_in == ("tflite_micro",) and meta.options["tflm_lut"] is True
    assert main(["verify", str(model)]) == 1  # default kernels: LiteRT, which lacks TFLM_DECODE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs only on TensorFlow Lite Micro: verify it with --kernels tflm" in err[0]
    onnx = tmp_path / "model.onnx"
    assert main(["verify", str(onnx), str(golden.golden_path(model)), "--kernels", "tflm"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kernels must be one of" in err[0], err


# --- bad input: one line each, nothing written


INTEGER = "--target tflm needs a fully-integer file"


@pytest.mark.parametrize(("extra", "message"), [
    (["--target", "tflm", "--keep-float", "conv1"], f"{INTEGER}: drop --keep-float"),
    (["--target", "tflm", "--option", "io=float"], f"{INTEGER}: --option io=float"),
    (["--target", "gpu"], "argument --target: invalid choice: 'gpu'"),
    (["--target", "tflm", "--format", "onnx-int8"], "--target tflm builds on tflite-int8"),
])
def test_bad_target_input_is_one_line(tiny_run, tmp_path, capsys, extra, message):
    from edgepack.cli import main

    out = tmp_path / "out"
    try:
        code = main(["export", "--model", str(tiny_run), "--out", str(out), *extra])
    except SystemExit as e:  # argparse's own one-line errors (exit 2)
        code = e.code
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_float_file_is_refused_as_not_fully_integer(tmp_path, tiny_archive, tiny_run):
    from edgepack.export import export
    from edgepack.export.tflm import require_runs

    export(tiny_run, "tflite-fp32", tmp_path / "fp32", data_path=tiny_archive, check_images=20)
    with pytest.raises(EdgepackError, match=r"tflite-fp32.tflite cannot run on TFLM: float ops") as e:
        require_runs(tmp_path / "fp32" / "tflite-fp32.tflite")
    assert "\n" not in str(e.value)
