"""TensorFlow Lite Micro: a .tflite file on TFLM's own kernels, as a microcontroller would run it.

    from edgepack import runtime
    from edgepack.runtime import tflm

    clf = runtime.load("model.tflite", kernels="tflm")   # a TflmClassifier
    tflm.arena_bytes("model.tflite")                       # RAM TFLM's allocator used, in bytes
    tflm.ops("model.tflite")                               # ["CONV_2D", "MAX_POOL_2D", ...]
    tflm.refusal("model.tflite")                           # None, or one line naming what TFLM lacks

The `tflite-micro` wheel (`pip install 'edgepack[tflm]'`, numpy only) is TFLM built for the host
with its reference kernels (no CMSIS-NN): the arithmetic a Cortex-M runs, not its speed. It is
imported by the first call that needs it. TFLM writes its messages (allocation figures, prepare
errors) to the process's C-level stderr: they are read at the file-descriptor level.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.runtime import metadata as md
from edgepack.runtime.classifier import Classifier, ModelFileError, check_io, checked_metadata

INSTALL = "pip install 'edgepack[tflm]'"
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_NODE = re.compile(r"Node (\S+) \(number (\d+)\) failed to (\w+)")
_SOURCE = re.compile(r"^\S+\.(?:cc|h)(?::\d+)?\s*")  # "tensorflow/lite/micro/kernels/x.cc:42 "
_OPCODE = re.compile(r"(?:opcode|op code)\s*'?([A-Z0-9_]+)'?", re.IGNORECASE)

Model = str | os.PathLike | bytes  # a .tflite path, or the file's bytes


class TflmError(ModelFileError):
    """TFLM cannot run a model file (an op it lacks, a type its kernels refuse, too small an arena)."""


def _runtime():
    try:
        from tflite_micro import runtime
    except ImportError:
        raise EdgepackError(f"TensorFlow Lite Micro is not installed: {INSTALL}") from None
    return runtime


def require() -> None:
    """EdgepackError (one line naming the extra) when the tflite-micro wheel is not installed."""
    _runtime()


def _bytes(model: Model) -> bytes:
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found")
    return path.read_bytes()


@contextmanager
def c_stderr(sink: list[str]):
    """Collect what C code writes to file descriptor 2 inside the block (appended to `sink`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def _why(log: str) -> str:
    """TFLM's prepare/allocate messages -> one line: the op(s) it stopped on and its reason."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    nodes = [(i, m) for i, ln in enumerate(lines) if (m := _NODE.search(ln))]
    if nodes:
        i, m = nodes[0]
        reason = _SOURCE.sub("", lines[i - 1]) if i > 0 else ""
        return f"op {m.group(1)} (node {m.group(2)}) failed to {m.group(3)}{': ' + reason if reason else ''}"
    missing = [m.group(1) for ln in lines if "opcode" in ln.lower() or "op code" in ln.lower()
               if (m := _OPCODE.search(ln))]
    if missing:
        return f"TFLM has no kernel for {', '.join(dict.fromkeys(missing))}"
    return lines[0][:200] if lines else "TFLM failed to allocate tensors"


def interpreter(model: Model, arena_size: int | None = None, name: str = "model"):
    """A TFLM interpreter with tensors allocated; TflmError (one line naming the op) if TFLM refuses.
    `arena_size`: bytes of tensor arena (None: TFLM's default, 10x the file's size)."""
    runtime = _runtime()
    raw = _bytes(model)
    log: list[str] = []
    try:
        with c_stderr(log):
            it = runtime.Interpreter.from_bytes(raw, arena_size=arena_size)
    except (RuntimeError, ValueError) as e:
        raise TflmError(f"TFLM cannot run {name}: {_why(''.join(log) or str(e))}") from None
    return it


def run_once(it) -> None:
    """Invoke `it` once on zeros (TFLM allocates some buffers at the first invoke)."""
    d = it.get_input_details(0)
    it.set_input(np.zeros(d["shape"], dtype=d["dtype"]), 0)
    it.invoke()


def arena_bytes(model: Model) -> int:
    """Bytes of tensor arena the model needs on TFLM: the RecordingMicroAllocator's own total
    (head + tail, after one invoke), the `kTensorArenaSize` to give the device (plus its alignment)."""
    it = interpreter(model, name=_name(model))
    run_once(it)
    log: list[str] = []
    with c_stderr(log):
        it.print_allocations()
    found = _TOTAL.search("".join(log))
    if not found:
        raise TflmError(f"TFLM printed no arena total for {_name(model)}: this tflite-micro build "
                        f"does not record allocations ({INSTALL})")
    return int(found.group(1))


def refusal(model: Model) -> str | None:
    """None if TFLM prepares and runs the model; else one line saying which op it refuses and why."""
    try:
        run_once(interpreter(model, name=_name(model)))
    except TflmError as e:
        return str(e)
    except RuntimeError as e:  # invoke failed: the same one-line shape
        return f"TFLM cannot run {_name(model)}: {str(e).strip().splitlines()[0][:200]}"
    return None


@dataclass(frozen=True)
class OpFacts:
    """One operator of a .tflite graph, read from the flatbuffer (no interpreter)."""

    op: str  # builtin name ("CONV_2D") or the custom op's name
    inputs: tuple[tuple[str, bool], ...]  # (tensor type "INT8"/"FLOAT32"/..., holds constant data)
    outputs: tuple[str, ...]  # output tensor types


def graph(model: Model) -> list[OpFacts]:
    """Every operator of every subgraph, in execution order, with its tensors' types."""
    runtime = _runtime()
    fb = runtime.schema_fb
    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    try:
        tree = runtime.convert_bytearray_to_object(bytearray(_bytes(model)))
    except Exception as e:  # flatbuffers raises assorted types for a file that is not a .tflite
        raise ModelFileError(f"{_name(model)} is not a .tflite flatbuffer ({type(e).__name__})") from None
    codes = [c.customCode.decode() if isinstance(c.customCode, bytes) else str(c.customCode)
             if c.customCode else op_names.get(runtime.get_builtin_code_from_operator_code(c), "UNKNOWN")
             for c in tree.operatorCodes]
    buffers = tree.buffers or []
    out = []
    def const(tensor) -> bool:  # holds data in the file (a weight), not an activation
        b = tensor.buffer
        return 0 < b < len(buffers) and (buffers[b].data is not None and len(buffers[b].data) > 0
                                         or bool(getattr(buffers[b], "size", 0)))

    for sg in tree.subgraphs or []:
        tensors = sg.tensors or []
        for op in sg.operators or []:
            ins = tuple((type_names.get(tensors[i].type, "?"), const(tensors[i]))
                        for i in op.inputs if i >= 0)  # -1: an optional input left out
            outs = tuple(type_names.get(tensors[i].type, "?") for i in op.outputs if i >= 0)
            out.append(OpFacts(codes[op.opcodeIndex], ins, outs))
    return out


def ops(model: Model) -> list[str]:
    """The model's op kinds in graph order, each once ("CONV_2D", ...; custom ops by their name)."""
    return list(dict.fromkeys(o.op for o in graph(model)))


def _name(model: Model) -> str:
    return "the model" if isinstance(model, bytes | bytearray | memoryview) else Path(model).name


class TflmClassifier(Classifier):
    """A .tflite file on TensorFlow Lite Micro's reference kernels, one image per invoke (TFLM's
    tensors have the file's fixed batch, 1 for converter files). `model`: bytes to run instead of the
    file's (e.g. the file after TFLM weight compression), described by `path`'s metadata."""

    runtime = "tflm"
    kernel_choices = ("tflm",)

    def __init__(self, path: Path, threads: int | None = None, kernels: str = "tflm", *,
                 model: bytes | None = None, arena_size: int | None = None):
        path = Path(path)
        meta = checked_metadata(lambda: md.read_sidecar(path))
        self.kernels = kernels
        self.interpreter = interpreter(path if model is None else model, arena_size, path.name)
        inp, out = self.interpreter.get_input_details(0), self.interpreter.get_output_details(0)
        shape = [int(d) for d in inp["shape"]]
        check_io(path, meta, np.dtype(inp["dtype"]).name, shape, [int(d) for d in out["shape"]])
        self._shape = tuple(shape)
        super().__init__(path, meta, threads, shape[0], np.dtype(out["dtype"]).name)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """TFLM takes one batch of the file's fixed size per invoke (a C++ interpreter, one thread)."""
        self.interpreter.set_input(batch.reshape(self._shape), 0)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_output(0), copy=True)


def predict_many(clf: TflmClassifier, images: np.ndarray,
                 progress: Callable[[int, int], None] | None = None, every: int = 500) -> np.ndarray:
    """`clf.predict` over many images, calling `progress(done, total)` every `every` images."""
    out = np.empty((len(images), clf.num_classes), dtype=np.float32)
    for start in range(0, len(images), every):
        out[start:start + every] = clf.predict(images[start:start + every])
        if progress:
            progress(min(start + every, len(images)), len(images))
    return out
