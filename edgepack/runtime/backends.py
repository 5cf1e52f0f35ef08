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
from edgepack.runtime.classifier import Classifier, ModelFileError, ModelNotFoundError

ONNX_DTYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}

# Which kernels run a file. "default": what apps get (ONNX Runtime with every graph optimization,
# so QDQ int8 models run fused integer kernels; LiteRT with its XNNPACK delegate). "reference": the
# engines' exact paths that do not depend on the CPU's integer kernels (ONNX Runtime with graph
# optimizations off: DequantizeLinear -> float op -> QuantizeLinear, the file's arithmetic simulated
# in float32; LiteRT's reference kernels, BUILTIN_REF, no delegate). "no-xnnpack" (LiteRT only): its
# optimized builtin kernels without the XNNPACK delegate. Export checks and reports use "reference"
# to judge an int8 file on any machine.
KERNELS = ("default", "reference", "no-xnnpack")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _checked_metadata(read) -> md.FileMetadata:
    """`read()`'s metadata, its MetadataError turned into the runtime's ModelFileError."""
    try:
        return read()
    except md.MetadataError as e:
        raise ModelFileError(str(e)) from None
    except FileNotFoundError as e:
        raise ModelNotFoundError(str(e)) from None


def _check_io(path: Path, meta: md.FileMetadata, in_dtype: str, in_shape, out_shape) -> None:
    """The file's input/output tensors must be what its metadata describes."""
    if in_dtype != meta.input_dtype:
        raise ModelFileError(f"{path}: metadata says {meta.input_dtype} input but the model takes "
                             f"{in_dtype}: the metadata belongs to another file, re-export it")
    known = [d if isinstance(d, int) and d > 0 else None for d in in_shape]
    want = list(meta.input_shape)
    if len(known) != len(want) + 1 or any(
            k is not None and k != w for k, w in zip(known[1:], want, strict=True)):
        raise ModelFileError(f"{path}: the model takes input {list(in_shape)}, its metadata says "
                             f"[N, {', '.join(map(str, want))}]: re-export it")
    classes = out_shape[-1] if out_shape else None
    if isinstance(classes, int) and classes != len(meta.class_names):
        raise ModelFileError(f"{path}: the model gives {classes} outputs but its metadata names "
                             f"{len(meta.class_names)} classes: re-export it")


class OnnxClassifier(Classifier):
    """ONNX Runtime, CPU provider, all graph optimizations (int8 QDQ models are ~4x slower without)."""

    runtime = "onnxruntime"
    kernel_choices = ("default", "reference")

    def __init__(self, path: Path, threads: int | None = None, kernels: str = "default"):
        import onnxruntime as ort

        self.kernels = kernels
        self.session = ort.InferenceSession(str(path), session_options(threads, kernels),
                                            providers=["CPUExecutionProvider"])
        meta = _checked_metadata(lambda: md.from_onnx_session(self.session, str(path)))
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs, "
                                 "expected one of each: not an edgepack classifier")
        in_dtype = ONNX_DTYPES.get(inputs[0].type, inputs[0].type)
        _check_io(path, meta, in_dtype, inputs[0].shape, outputs[0].shape)
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
        meta = _checked_metadata(lambda: md.read_sidecar(path))
        self.kernels = kernels
        self.interpreter = new_interpreter(path, threads, kernels)
        inp = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ModelFileError(f"{path} has {len(inp)} inputs and {len(out)} outputs, "
                                 "expected one of each: not an edgepack classifier")
        inp, out = inp[0], out[0]
        signature = [int(d) for d in inp["shape_signature"]]
        _check_io(path, meta, np.dtype(inp["dtype"]).name, signature, [int(d) for d in out["shape"]])
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


def load(path: str | os.PathLike, threads: int | None = None, kernels: str = "default") -> Classifier:
    """Load an exported model file (.onnx or .tflite) and its edgepack metadata.

    `threads`: intra-op threads (None = the engine's default: ONNX Runtime one per physical core,
    LiteRT 1). `kernels`: one of KERNELS ("reference" gives the CPU-independent result of an int8
    file, slower). Raises ModelNotFoundError / ModelFileError (both EdgepackError) naming the file.
    """
    path = Path(path)
    backend = RUNTIMES.get(path.suffix.lower())
    if backend is None:
        raise ModelFileError(f"{path}: unknown model file type {path.suffix or '(no suffix)'!r}, "
                             f"expected one of {', '.join(RUNTIMES)}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1 or None, got {threads!r}")
    if kernels not in backend.kernel_choices:
        raise ValueError(f"kernels must be one of {', '.join(backend.kernel_choices)} for "
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
                             f"({type(e).__name__}: {_first_line(e)}): re-export it") from None
