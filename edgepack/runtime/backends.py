"""The engines: ONNX Runtime for `.onnx` files, LiteRT for `.tflite` files, and `load()`.

Each engine is imported only when a file of its kind is loaded, so `import edgepack.runtime`
costs numpy alone.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from edgepack.runtime import metadata as md
from edgepack.runtime.classifier import (
    Classifier,
    ModelFileError,
    ModelNotFoundError,
    check_io,
    checked_metadata,
    first_line,
)
from edgepack.runtime.tflm import TflmClassifier

ONNX_DTYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}

# Which kernels run a file. "default": what apps get (ONNX Runtime with every graph optimization,
# so QDQ int8 models run fused integer kernels; LiteRT with its XNNPACK delegate). "reference": the
# engines' exact paths that do not depend on the CPU's integer kernels (ONNX Runtime with graph
# optimizations off: DequantizeLinear -> float op -> QuantizeLinear, the file's arithmetic simulated
# in float32; LiteRT's reference kernels, BUILTIN_REF, no delegate). "no-xnnpack" (LiteRT only): its
# optimized builtin kernels without the XNNPACK delegate. Export checks and reports use "reference"
# to judge an int8 file on any machine.
KERNELS = ("default", "reference", "no-xnnpack")


class OnnxClassifier(Classifier):
    """ONNX Runtime, CPU provider, all graph optimizations (int8 QDQ models are ~4x slower without)."""

    runtime = "onnxruntime"
    kernel_choices = ("default", "reference")

    def __init__(self, path: Path, threads: int | None = None, kernels: str = "default"):
        import onnxruntime as ort

        self.kernels = kernels
        self.session = ort.InferenceSession(str(path), session_options(threads, kernels),
                                            providers=["CPUExecutionProvider"])
        meta = checked_metadata(lambda: md.from_onnx_session(self.session, str(path)))
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs, "
                                 "expected one of each: not an edgepack classifier")
        in_dtype = ONNX_DTYPES.get(inputs[0].type, inputs[0].type)
        check_io(path, meta, in_dtype, inputs[0].shape, outputs[0].shape)
        batch = inputs[0].shape[0]
        self._in_name, self._out_names = inputs[0].name, [outputs[0].name]
        super().__init__(path, meta, threads, batch if isinstance(batch, int) and batch > 0 else None,
                         ONNX_DTYPES.get(outputs[0].type, "float32"))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self._out_names, {self._in_name: batch})[0]  # sessions are thread-safe


def session_options(threads: int | None, kernels: str = "default"):
    """The ONNX Runtime options edgepack uses (also for the raw baseline in `edgepack bench`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if kernels == "reference"
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.log_severity_level = 3  # errors only
    if threads:
        so.intra_op_num_threads = threads
    return so


class LiteRTClassifier(Classifier):
    """LiteRT (ai_edge_litert) interpreter with XNNPACK (its default). Interpreters are not
    thread-safe: calls on one classifier are serialised by a lock (load one per thread to run
    TFLite inference in parallel)."""

    runtime = "litert"
    kernel_choices = KERNELS

    def __init__(self, path: Path, threads: int | None = None, kernels: str = "default"):
        meta = checked_metadata(lambda: md.read_sidecar(path))
        self.kernels = kernels
        self.interpreter = new_interpreter(path, threads, kernels)
        inp = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ModelFileError(f"{path} has {len(inp)} inputs and {len(out)} outputs, "
                                 "expected one of each: not an edgepack classifier")
        inp, out = inp[0], out[0]
        signature = [int(d) for d in inp["shape_signature"]]
        check_io(path, meta, np.dtype(inp["dtype"]).name, signature, [int(d) for d in out["shape"]])
        self._in_index, self._out_index = inp["index"], out["index"]
        self._batch = int(inp["shape"][0])  # the size the tensors are allocated for now
        self._lock = threading.Lock()
        # Converter files have batch 1 with a dynamic signature (-1): resize for bigger batches
        # (one invoke of 256 images was faster here than 256 invokes of one).
        super().__init__(path, meta, threads, None if signature[0] == -1 else self._batch,
                         np.dtype(out["dtype"]).name)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            if len(batch) != self._batch:
                self.interpreter.resize_tensor_input(self._in_index, list(batch.shape), strict=True)
                self.interpreter.allocate_tensors()
                self._batch = len(batch)
            self.interpreter.set_tensor(self._in_index, batch)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._out_index)  # a copy, safe after the lock


def new_interpreter(path: Path, threads: int | None, kernels: str = "default"):
    """A LiteRT interpreter with tensors allocated (also the raw baseline in `edgepack bench`)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = {"default": OpResolverType.AUTO, "reference": OpResolverType.BUILTIN_REF,
                "no-xnnpack": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[kernels]
    interpreter = Interpreter(model_path=str(path), num_threads=threads,
                              experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


# File suffix -> backend. The suffix picks the engine; the file's own metadata says what it is.
RUNTIMES: dict[str, type[Classifier]] = {".onnx": OnnxClassifier, ".tflite": LiteRTClassifier}
# (suffix, kernels) -> the backend when those kernels belong to another engine than the suffix's:
# "tflm" runs a .tflite file on TensorFlow Lite Micro (edgepack.runtime.tflm; `edgepack[tflm]`).
ENGINES: dict[tuple[str, str], type[Classifier]] = {(".tflite", "tflm"): TflmClassifier}


def kernel_choices(suffix: str) -> tuple[str, ...]:
    """Every `kernels=` value `load()` accepts for files with this suffix."""
    return (*RUNTIMES[suffix].kernel_choices, *(k for s, k in ENGINES if s == suffix))


def load(path: str | os.PathLike, threads: int | None = None, kernels: str = "default") -> Classifier:
    """Load an exported model file (.onnx or .tflite) and its edgepack metadata.

    `threads`: intra-op threads (None = the engine's default: ONNX Runtime one per physical core,
    LiteRT 1). `kernels`: one of KERNELS ("reference" gives the CPU-independent result of an int8
    file, slower), or "tflm" for a .tflite file on TensorFlow Lite Micro (edgepack.runtime.tflm).
    Raises ModelNotFoundError / ModelFileError (both EdgepackError) naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    backend = ENGINES.get((suffix, kernels), RUNTIMES.get(suffix))
    if backend is None:
        raise ModelFileError(f"{path}: unknown model file type {path.suffix or '(no suffix)'!r}, "
                             f"expected one of {', '.join(RUNTIMES)}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1 or None, got {threads!r}")
    if kernels not in backend.kernel_choices:
        raise ValueError(f"kernels must be one of {', '.join(kernel_choices(suffix))} for "
                         f"{path.suffix} files, got {kernels!r}")
    if not path.exists():
        raise ModelNotFoundError(f"model file {path} not found")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file: pass an exported .onnx or .tflite file")
    try:
        return backend(path, threads, kernels)
    except ModelFileError:
        raise
    except Exception as e:  # the engines raise assorted types for corrupt or truncated files
        raise ModelFileError(f"{path} is not a valid {path.suffix[1:]} model file, or is truncated "
                             f"({type(e).__name__}: {first_line(e)}): re-export it") from None
