"""TFLM weight compression: clustered int8 weights stored as look-up-table indices (real flash savings).

A clustered (or pruned -> clustered) model keeps only a few distinct values per kernel; after int8
conversion each output channel of a weight tensor holds at most that many distinct int8 values. TFLM's
compressor (the `tflite-micro` wheel, extra `tflm`) stores such a tensor as a value table plus
`bits`-wide indices, bits = ceil(log2(distinct values)), and inserts a DECODE operator (custom op
"TFLM_DECODE") that restores the int8 tensor in the arena before its first use. Decoding is lossless:
the compressed file gives exactly the uncompressed file's outputs.

    from edgepack.target.tflm_lut import lut_compress
    result = lut_compress(Path("tflite-int8.tflite").read_bytes())
    Path("lut.tflite").write_bytes(result.model)   # result.tensors: what was compressed, how

Only the weights of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED are considered (TFLM's kernels
decode them per channel); a tensor is compressed only where its estimated encoded size, value tables
and graph overhead are smaller than its int8 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgepack.errors import EdgepackError

# TFLM's LUT format: index widths 1-7 bits, at most 128 values per table (decode_state_lut's limits).
MAX_BITS = 7
MAX_TABLE = 128
DCM_BYTES = 16  # the decode common metadata header before the value tables
# Graph bytes a compressed tensor adds besides its indices and tables: the ancillary and output
# tensors, their buffer entries, its DECODE operator, flatbuffer alignment. Measured 350-730 bytes per
# tensor on the CIFAR-10 CNN (a 640-byte kernel whose estimate saved 300 bytes made the file 48 bytes
# larger), so a tensor must save at least this much by estimate to be compressed.
OVERHEAD_BYTES = 1024
# (operator, input position) of the weight tensors considered
WEIGHT_INPUTS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}


@dataclass(frozen=True)
class LutTensor:
    """One weight tensor as compressed."""

    index: int  # tensor index in subgraph 0 (as LiteRT's get_tensor_details lists it)
    name: str  # tensor name in the file
    bits: int  # index bit width, 1-7
    values: int  # largest number of distinct int8 values in one channel
    axis: int | None  # the output-channel axis (one value table per channel along it); None: one table
    int8_bytes: int  # bytes of the tensor before
    estimated_bytes: int  # indices + value tables + header, before graph overhead


@dataclass(frozen=True)
class LutResult:
    """What `lut_compress` made."""

    model: bytes  # the compressed .tflite (DECODE operators inserted); runs in TFLM only
    tensors: tuple[LutTensor, ...]  # the compressed weight tensors, in tensor order
    bytes_before: int  # size of the input file
    bytes_after: int  # len(model)

    @property
    def bits(self) -> dict[int, int]:
        """Index bit width per compressed tensor index."""
        return {t.index: t.bits for t in self.tensors}

    def summary(self) -> dict:
        """JSON-ready record (export's tflm.json)."""
        return {"bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "tensors": [vars(t) for t in self.tensors]}


def index_bits(values: int) -> int:
    """Bits of an index into a table of `values` entries: ceil(log2(values)), at least 1."""
    return max(1, (int(values) - 1).bit_length())


def plan_tensor(index: int, name: str, array: np.ndarray, channel_axis: int | None) -> LutTensor | None:
    """The value tables of this int8 weight tensor, or None when it does not fit TFLM's limits or would
    not save bytes: one table per output channel (along `channel_axis`) for a per-channel-quantized
    tensor, one table for the whole tensor (`channel_axis` None) for a per-tensor-quantized one.

    The tables must follow the tensor's quantization: with tflite-micro 0.dev20261023182759, one table
    for a per-channel-quantized conv, or per-channel tables for a per-tensor-quantized dense kernel (as
    QAT writes them), changed TFLM's outputs although every decoded value was right.
    """
    slices = [array] if channel_axis is None else list(np.moveaxis(array, channel_axis, 0))
    counts = [len(np.unique(s)) for s in slices]
    values = max(counts)
    bits = index_bits(values)
    if values > MAX_TABLE or bits > MAX_BITS:
        return None
    size = math.ceil(array.size * bits / 8) + len(counts) * values + DCM_BYTES
    if size + OVERHEAD_BYTES >= array.size:
        return None
    return LutTensor(index, name, bits, values, channel_axis, int(array.size), int(size))


def _weight_tensors(model) -> list[tuple[int, object]]:
    """(index, tensor) of the constant int8 weights of the considered operators, subgraph 0."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    names = {getattr(schema.BuiltinOperator, k): k for k in WEIGHT_INPUTS}
    graph = model.subgraphs[0]
    found = {}
    for op in graph.operators:
        position = WEIGHT_INPUTS.get(names.get(op.opcode))
        if position is None or len(op.inputs) <= position or op.inputs[position] is None:
            continue
        tensor = op.inputs[position]
        if tensor.dtype == schema.TensorType.INT8 and tensor.buffer is not None and tensor.array is not None:
            found[graph.tensors.index(tensor)] = tensor
    return sorted(found.items())


def _channel_axis(tensor) -> int | None:
    """The quantization axis of a per-channel-quantized tensor (more than one scale), else None."""
    q = tensor.quantization
    scales = [] if q is None or q.scales is None else np.atleast_1d(q.scales)
    return int(q.axis or 0) if len(scales) > 1 else None


def lut_compress(model: bytes) -> LutResult:
    """Compress the clustered int8 weights of .tflite `model` with TFLM's look-up tables.

    Raises EdgepackError (one line) when no weight tensor would get smaller (a model that is not
    clustered, or not int8) or the file cannot be read.
    """
    try:  # the package's `compress` attribute is the function, not the module
        from tflite_micro.tensorflow.lite.micro.compression import (
            compressor,
            model_editor,
            spec,
            spec_builder,
        )
        from tflite_micro.tensorflow.lite.micro.compression.compress import compress
    except ImportError:
        raise EdgepackError("TFLM compression needs the tflm extra (tflite-micro not installed): run "
                            "pip install 'edgepack[tflm]'") from None
    try:
        parsed = model_editor.read(bytes(model))
    except Exception as e:  # flatbuffers raises assorted types for a file that is not a .tflite
        raise EdgepackError(f"not a .tflite model ({type(e).__name__}): pass an int8 .tflite file") from None
    plans = [p for i, t in _weight_tensors(parsed)
             if (p := plan_tensor(i, t.name or f"tensor {i}", t.array, _channel_axis(t)))]
    if not plans:
        raise EdgepackError("no int8 weight tensor would get smaller as a TFLM look-up table (more than "
                            f"{MAX_TABLE} distinct values per channel, or too few weights): cluster the "
                            "model first (edgepack compress --technique cluster)")
    # A device never reads tensor names (TensorFlow's strip_strings tool drops them for the same
    # reason): ~2.8 KB of the CIFAR-10 CNN's file. Outputs are unchanged; tensor indices are kept.
    for subgraph in parsed.subgraphs:
        for tensor in subgraph.tensors:
            tensor.name = None
    stripped = bytes(parsed.build())
    builder = spec_builder.SpecBuilder()
    for p in plans:
        builder.add_tensor(subgraph=0, tensor=p.index).with_lut(index_bitwidth=p.bits,
                                                                mode=spec.PerTensor() if p.axis is None
                                                                else spec.PerChannel(axis=p.axis))
    try:
        out = bytes(compress(stripped, builder.build()))
    except compressor.CompressionError as e:  # e.g. a weight another operator needs constant at prepare time
        raise EdgepackError(f"TFLM's compressor refused the model ({str(e).splitlines()[0][:200]}): "
                            "keep the int8 file") from None
    if len(out) >= len(model):
        raise EdgepackError(f"TFLM look-up tables made the file larger ({len(model):,} -> {len(out):,} "
                            "bytes): keep the int8 file")
    return LutResult(out, tuple(plans), len(model), len(out))


def lut_or_reason(model: bytes) -> tuple[LutResult | None, str | None]:
    """`lut_compress(model)`, or (None, the one-line reason) where it does not apply (not clustered):
    the one rule export --target tflm and compare --target tflm share."""
    try:
        return lut_compress(model), None
    except EdgepackError as e:
        return None, str(e)
