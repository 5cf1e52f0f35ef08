"""`make runtime-check`: edgepack's runtime in an environment made with `pip install .` alone.

    .venv-runtime/bin/python tests/runtime_only_check.py FOLDER   # in the runtime-only environment
    .venv/bin/python tests/runtime_only_check.py --make FOLDER    # main environment: make FOLDER

FOLDER holds small exported files (every format), images.npy and, per file, the probabilities the
main environment's runtime gave (<file>.probs.npy), its golden vectors (<file>.golden.npz) and a
deliberately altered copy of each float file (altered-<file>: one weight tensor changed) that
`edgepack verify` must fail. tests/test_runtime.py writes it when
$EDGEPACK_RUNTIME_MODELS is set (as `make test` does); --make trains and exports a tiny model instead.
The check: TensorFlow is not installed and never imported, the installed edgepack (not the source
tree) loads every file and reproduces the probabilities, and `edgepack predict` / `edgepack bench`
work with the base install (`bench --json` gives the device document `compare --device-results`
reads; PNG/JPEG without Pillow: the one-line install hint).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

MODEL_SUFFIXES = (".onnx", ".tflite")
ALTERED = "altered-"


def _altered(w: np.ndarray) -> np.ndarray:
    """Weights pushed to large values of flipped sign (int8: -127 or 127): a clear change even for a
    barely trained test model whose outputs are all near 1/10."""
    if w.dtype.kind == "f":
        return -100 * w
    return np.where(w > 0, -127, 127).astype(w.dtype)


def altered_copy(src: Path, dst: Path) -> Path:
    """A copy of an exported file (and its sidecar) with its largest weight tensor altered (_altered):
    the same metadata and size, different arithmetic. ONNX: through onnx; TFLite: the tensor's bytes
    in place."""
    from edgepack.runtime import metadata

    if src.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(src))
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        init.CopyFrom(numpy_helper.from_array(_altered(numpy_helper.to_array(init)), init.name))
        onnx.save(model, str(dst))
        return dst
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(src), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    raw = bytearray(src.read_bytes())
    for d in sorted(it.get_tensor_details(), key=lambda d: -int(np.prod(d["shape"]))):
        try:
            w = it.get_tensor(d["index"])
        except ValueError:  # activations have no data before a call
            continue
        at = raw.find(w.tobytes())
        if at >= 0 and raw.find(w.tobytes(), at + 1) < 0:  # found once: those bytes are this tensor
            raw[at:at + w.nbytes] = _altered(w).tobytes()
            dst.write_bytes(bytes(raw))
            shutil.copy(metadata.sidecar_path(src), metadata.sidecar_path(dst))
            return dst
    raise AssertionError(f"{src}: no weight tensor found to alter")


def write_check_folder(folder: Path, files: dict[str, Path], images: np.ndarray) -> None:
    """Copy exported files (with TFLite sidecars), the images and this environment's predictions."""
    from edgepack import runtime
    from edgepack.runtime import golden, metadata

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", images)
    for name, path in files.items():
        dest = folder / (name + path.suffix)
        shutil.copy(path, dest)
        if metadata.sidecar_path(path).exists():
            shutil.copy(metadata.sidecar_path(path), metadata.sidecar_path(dest))
        np.save(folder / f"{dest.name}.probs.npy", runtime.load(dest).predict(images))
        shutil.copy(golden.golden_path(path), golden.golden_path(dest))
        # Float files only: the tiny test model's int8 outputs are clipped to its calibrated range (all
        # near 1/10), so no weight change moves them far past the int8 tolerance on every CPU;
        # tests/test_golden.py checks altered int8 files on a model with clear margins.
        if golden.read_golden(golden.golden_path(dest))["meta"]["atol"] < golden.INTEGER_ATOL:
            altered_copy(dest, folder / (ALTERED + dest.name))


def make(folder: Path) -> None:
    """Main environment only: train a tiny model on tiny synthetic data and export every format."""
    import tempfile

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from conftest import NO_INT8_GATE, tiny_members, write_archive

    from edgepack.data import load_data
    from edgepack.export import export
    from edgepack.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = write_archive(tmp / "cifar-10-python.tar.gz", tiny_members())
        ds = load_data(archive)
        run = train(archive, tmp / "run", TrainConfig(epochs=1, batch_size=16), ds=ds)
        s = export(run, ["all"], tmp / "export", options=NO_INT8_GATE, check_images=20, ds=ds)
        write_check_folder(folder, {n: tmp / "export" / f["file"] for n, f in s["formats"].items()},
                           ds.x_test)


def tf_modules() -> list[str]:
    return [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras")]


def check(folder: Path) -> None:
    for name in ("tensorflow", "tf_keras", "tensorflow_model_optimization"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed: not a runtime-only environment"
    import edgepack
    from edgepack import runtime

    src = Path(__file__).resolve().parent.parent / "edgepack"
    assert Path(edgepack.__file__).resolve().parent != src, f"testing the source tree {src}, not the install"
    files = sorted(p for p in folder.iterdir()
                   if p.suffix in MODEL_SUFFIXES and not p.name.startswith(ALTERED))
    assert {p.suffix for p in files} == set(MODEL_SUFFIXES), f"{folder}: needs .onnx and .tflite files"
    images = np.load(folder / "images.npy", allow_pickle=False)
    for path in files:
        clf = runtime.load(path, threads=1)
        probs = clf.predict(images)
        expected = np.load(folder / f"{path.name}.probs.npy", allow_pickle=False)
        np.testing.assert_allclose(probs, expected, atol=1e-6, err_msg=str(path))
        assert len(clf.classify(images[0], top_k=3)[0]) == 3
        print(f"ok  {path.name:<24} {clf.format:<15} {clf.runtime:<12} {len(images)} images")
    assert not tf_modules(), f"imported {tf_modules()}"

    cli = Path(sys.executable).parent / "edgepack"
    altered = {p.suffix for p in folder.iterdir() if p.name.startswith(ALTERED)} & set(MODEL_SUFFIXES)
    assert altered == set(MODEL_SUFFIXES), f"{folder}: needs altered .onnx and .tflite files"
    for path in files:  # golden vectors: the file passes, its altered copy (float files) fails
        bad = folder / (ALTERED + path.name)
        for model, code in ((path, 0), (bad, 1)) if bad.exists() else ((path, 0),):
            done = subprocess.run([str(cli), "verify", str(model), f"{folder / path.name}.golden.npz"],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == code, (model, done.stdout, done.stderr)
            print(f"ok  verify exit {code}: {done.stdout.strip()}")
    onnx = next(p for p in files if p.suffix == ".onnx")
    done = subprocess.run([str(cli), "predict", str(onnx), str(folder / "images.npy"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["predictions"]) == len(images)
    done = subprocess.run([str(cli), "bench", *map(str, files), "--runs", "20", "--warmup", "2",
                           "--import-repeats", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout.rstrip())
    done = subprocess.run([str(cli), "bench", str(onnx), "--runs", "10", "--warmup", "1", "--import-repeats",
                           "1", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)  # the JSON alone on stdout: what `compare --device-results` reads
    assert doc["kind"] == "edgepack-bench" and doc["device"]["versions"]["onnxruntime"], doc["device"]
    assert doc["files"][0]["status"] == "ok" and len(doc["files"][0]["sha256"]) == 64, doc["files"]
    print(f"ok  bench --json: schema {doc['schema_version']}, {doc['device']['cpu']['model']}, "
          f"p50 {doc['files'][0]['edgepack']['p50_ms']:.3f} ms")
    if importlib.util.find_spec("PIL") is None:
        fake_png = folder / "fake.png"
        fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
        done = subprocess.run([str(cli), "predict", str(onnx), str(fake_png)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 1 and "pip install 'edgepack[images]'" in done.stderr, done.stderr
        print("ok  PNG without Pillow: " + done.stderr.strip())
    print(f"runtime-check passed: edgepack {edgepack.__version__} from {Path(edgepack.__file__).parent}, "
          "no TensorFlow installed or imported")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--make":
        make(Path(args[1]))
    elif len(args) == 1:
        check(Path(args[0]))
    else:
        sys.exit(__doc__.strip().splitlines()[2])
