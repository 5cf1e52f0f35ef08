"""The standard TFLite metadata (labels, normalization) in a .tflite file, for the TFLite Support Task
Library's ImageClassifier and Android Studio's model import, written and read without TensorFlow.

tflite-support's own writer (`metadata_writers.image_classifier`) needs protobuf < 4 and cannot be
installed beside TensorFlow 2.21, so the few tables an image classifier needs are built here with the
`flatbuffers` package, following tflite-support's metadata_schema.fbs (file identifier "M001"): the
table fields below are that schema's field order (a union takes two slots: its type, then its value).
The buffer is stored as model metadata "TFLITE_METADATA" (ai_edge_litert's model schema) and the
labels file is zipped onto the end of the model, as tflite-support's MetadataPopulator does.

Normalization is TFLite's `(pixel - mean) / std` per channel in pixel units, derived from edgepack's
spec `(pixel / divisor + offset - m) / s`: mean = divisor * (m - offset), std = divisor * s.
"""

from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl  # noqa: TID253  the schema only (flatbuffers), no engine
from flatbuffers.table import Table

from edgepack.runtime.metadata import FileMetadata

METADATA_NAME = "TFLITE_METADATA"  # the model metadata entry the Task Library looks for
IDENTIFIER = b"M001"  # metadata_schema.fbs file_identifier
MODEL_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
# The oldest metadata parser that reads these fields (tflite-support's metadata_version for image
# classifiers written with ImageProperties, NormalizationOptions and TENSOR_AXIS_LABELS).
MIN_PARSER_VERSION = "1.0.0"
RGB, TENSOR_AXIS_LABELS = 1, 2  # ColorSpaceType.RGB, AssociatedFileType.TENSOR_AXIS_LABELS
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # ContentProperties union types
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union type


def normalization(meta: FileMetadata) -> tuple[list[float], list[float]]:
    """TFLite per-channel (mean, std) in pixel units equal to the file's pixel_scaling."""
    s, channels = meta.pixel_scaling, meta.input_shape[-1]
    div, off = float(s["divisor"]), float(s.get("offset") or 0.0)
    m = s.get("mean") or [0.0] * channels
    sd = s.get("std") or [1.0] * channels
    m, sd = np.broadcast_to(m, channels), np.broadcast_to(sd, channels)
    return [div * (float(a) - off) for a in m], [div * float(b) for b in sd]


def populate(model: bytes, meta: FileMetadata) -> bytes:
    """`model` with the standard metadata and a zipped labels file (replacing any earlier ones: the
    flatbuffer is rebuilt from its parsed tree, which leaves out a zip an earlier call appended)."""
    tree = tfl.ModelT.InitFromPackedBuf(bytearray(model), 0)
    buffer = tfl.BufferT()
    buffer.data = np.frombuffer(_metadata_buffer(meta), dtype=np.uint8)
    tree.buffers, tree.metadata = tree.buffers or [], tree.metadata or []
    old = [m for m in tree.metadata if m.name.decode() == METADATA_NAME]
    if old:  # populated before: replace its buffer in place
        tree.buffers[old[0].buffer] = buffer
    else:
        tree.buffers.append(buffer)
        entry = tfl.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
        tree.metadata.append(entry)
    b = flatbuffers.Builder(len(model) + 4096)
    b.Finish(tree.Pack(b), MODEL_IDENTIFIER)
    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as zf:  # appended after the flatbuffer; the interpreter ignores it
        zf.writestr(LABELS_FILE, "\n".join(meta.class_names) + "\n")
    return out.getvalue()


def _metadata_buffer(meta: FileMetadata) -> bytes:
    b = flatbuffers.Builder(1024)
    mean, std = normalization(meta)
    height, width, _ = meta.input_shape
    image_size = _table(b, [("u32", width), ("u32", height)])
    image = _table(b, [("u8", RGB), ("off", image_size)])
    norm = _table(b, [("off", _floats(b, mean)), ("off", _floats(b, std))])
    unit = _table(b, [("u8", NORMALIZATION_OPTIONS), ("off", norm)])
    # Stats: the input tensor's value range (as tflite-support's writer: raw codes for integer input)
    if meta.input_dtype == "float32":
        lo = [(0.0 - a) / s for a, s in zip(mean, std, strict=True)]
        hi = [(255.0 - a) / s for a, s in zip(mean, std, strict=True)]
    else:
        info = np.iinfo(meta.input_dtype)
        lo, hi = [float(info.min)], [float(info.max)]
    out_range = [0.0, 1.0] if meta.output_quantization is None else [0.0, 255.0]  # probability / codes
    in_stats = _table(b, [("off", _floats(b, hi)), ("off", _floats(b, lo))])
    name = b.CreateString("image")
    desc = b.CreateString(f"{meta.layout} {meta.channel_order} image, {height}x{width}; resize: "
                          f"{meta.resize['crop']} crop, {meta.resize['filter']}")
    content = _table(b, [("u8", IMAGE_PROPERTIES), ("off", image)])
    inp = _table(b, [("off", name), ("off", desc), None, ("off", content),
                     ("off", _offsets(b, [unit])), ("off", in_stats)])
    labels = _table(b, [("off", b.CreateString(LABELS_FILE)), ("off", b.CreateString("class names")),
                        ("i8", TENSOR_AXIS_LABELS)])
    feature = _table(b, [])
    out_content = _table(b, [("u8", FEATURE_PROPERTIES), ("off", feature)])
    out_stats = _table(b, [("off", _floats(b, out_range[1:])), ("off", _floats(b, out_range[:1]))])
    out = _table(b, [("off", b.CreateString("probability")), ("off", b.CreateString("class probabilities")),
                     None, ("off", out_content), None, ("off", out_stats), ("off", _offsets(b, [labels]))])
    subgraph = _table(b, [None, None, ("off", _offsets(b, [inp])), ("off", _offsets(b, [out]))])
    model = _table(b, [("off", b.CreateString(f"edgepack {meta.variant} {meta.format}")),
                       ("off", b.CreateString(f"Image classifier of {len(meta.class_names)} classes")),
                       ("off", b.CreateString(meta.edgepack_version)), ("off", _offsets(b, [subgraph])),
                       ("off", b.CreateString("edgepack")), None, None,
                       ("off", b.CreateString(MIN_PARSER_VERSION))])
    b.Finish(model, IDENTIFIER)
    return bytes(b.Output())


def _table(b: flatbuffers.Builder, slots: list) -> int:
    """A table whose field i is slots[i]: ("u8"|"i8"|"u32", value), ("off", offset) or None (absent)."""
    b.StartObject(len(slots))
    prepend = {"u8": b.PrependUint8Slot, "i8": b.PrependInt8Slot, "u32": b.PrependUint32Slot,
               "off": b.PrependUOffsetTRelativeSlot}
    for i, slot in enumerate(slots):
        if slot is not None:
            prepend[slot[0]](i, slot[1], 0)
    return b.EndObject()


def _floats(b: flatbuffers.Builder, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return b.EndVector()


def _offsets(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def read(model: bytes) -> dict:
    """The standard metadata of a .tflite file: labels, normalization and colour space (for tests and
    for checking a file; the Task Library and tflite-support's MetadataDisplayer read the same)."""
    tree = tfl.Model.GetRootAs(model, 0)
    entries = [tree.Metadata(i) for i in range(tree.MetadataLength())]
    found = [m.Buffer() for m in entries if m.Name().decode() == METADATA_NAME]
    if not found:
        raise ValueError(f"no {METADATA_NAME} in the model")
    buf = tree.Buffers(found[0]).DataAsNumpy().tobytes()
    if buf[4:8] != IDENTIFIER:
        raise ValueError(f"{METADATA_NAME} is not a metadata flatbuffer ({IDENTIFIER.decode()})")
    root = Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    subgraph = _vector(root, 3)[0]
    inp, out = _vector(subgraph, 2)[0], _vector(subgraph, 3)[0]
    content = _child(inp, 3)
    norm = _child(_vector(inp, 4)[0], 1)
    with zipfile.ZipFile(io.BytesIO(model)) as zf:
        label_file = _string(_vector(out, 6)[0], 0)
        labels = zf.read(label_file).decode().splitlines()
    return {"labels": labels, "label_file": label_file, "mean": _floats_at(norm, 0),
            "std": _floats_at(norm, 1), "color_space": _scalar(_child(content, 1), 0),
            "content_type": _scalar(content, 0), "min_parser_version": _string(root, 7)}


def _slot(t: Table, slot: int) -> int:
    return t.Offset(4 + 2 * slot)  # vtable entries follow the vtable's two uint16 sizes


def _child(t: Table, slot: int) -> Table:
    return Table(t.Bytes, t.Indirect(_slot(t, slot) + t.Pos))


def _vector(t: Table, slot: int) -> list[Table]:
    o = _slot(t, slot)
    start = t.Vector(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def _string(t: Table, slot: int) -> str:
    return t.String(_slot(t, slot) + t.Pos).decode()


def _floats_at(t: Table, slot: int) -> list[float]:
    return t.GetVectorAsNumpy(flatbuffers.number_types.Float32Flags, _slot(t, slot)).tolist()


def _scalar(t: Table, slot: int) -> int:
    o = _slot(t, slot)
    return t.Get(flatbuffers.number_types.Uint8Flags, o + t.Pos) if o else 0
