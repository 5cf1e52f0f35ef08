"""The classifier every backend shares: input checks, pixel scaling, (de)quantization, top-k (numpy only).

A backend (edgepack.runtime.backends) only runs a prepared batch through its engine; everything an
app could get wrong (dtype, layout, scaling, int8 scale and zero point) is decided here from the
model file's metadata (edgepack.runtime.metadata).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.runtime import metadata as md
from edgepack.runtime.metadata import CHANNEL_ORDER, FileMetadata
from edgepack.runtime.preprocess import scale_pixels

CHUNK = 256  # images per engine call for models with a dynamic batch (bounds activation memory)
CHANNEL_ORDERS = ("RGB", "BGR")  # predict(channel_order=...): BGR is what OpenCV's imread gives


class ModelFileError(EdgepackError, ValueError):
    """A model file is not a usable edgepack model (corrupt, truncated, not a model, bad metadata)."""


class ModelNotFoundError(ModelFileError, FileNotFoundError):
    """A model file (or its metadata sidecar) does not exist."""


class InputError(EdgepackError, ValueError):
    """Images passed to predict() have the wrong rank, shape, dtype or values."""


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes."""

    label: str  # class name from the model's metadata
    class_id: int  # index into class_names
    score: float  # probability in [0, 1]


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def checked_metadata(read) -> md.FileMetadata:
    """`read()`'s metadata, its MetadataError turned into the runtime's ModelFileError."""
    try:
        return read()
    except md.MetadataError as e:
        raise ModelFileError(str(e)) from None
    except FileNotFoundError as e:
        raise ModelNotFoundError(str(e)) from None


def check_io(path: Path, meta: md.FileMetadata, in_dtype: str, in_shape, out_shape) -> None:
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


class Classifier:
    """A loaded model: `predict` gives probabilities, `classify` names. Subclasses implement `_run`."""

    runtime = ""  # engine name, set by each backend

    def __init__(self, path: Path, metadata: FileMetadata, threads: int | None, fixed_batch: int | None,
                 output_dtype: str):
        self.path = path
        self.threads = threads  # None = the engine's default
        self._metadata = metadata
        self.class_names = tuple(metadata.class_names)
        self.input_shape = tuple(metadata.input_shape)  # one image, NHWC
        self.input_dtype = np.dtype(metadata.input_dtype)  # what the file's input tensor takes
        self.fixed_batch = fixed_batch  # batch size baked into the file, or None if dynamic
        self._in_q, self._out_q = metadata.input_quantization, metadata.output_quantization
        for what, dtype, q in (("input", self.input_dtype, self._in_q),
                               ("output", np.dtype(output_dtype), self._out_q)):
            if dtype.kind in "iu" and not q:
                raise ModelFileError(f"{path}: the model's {what} is {dtype} but its metadata gives no "
                                     f"{what}_quantization: re-export it")
        self._scaling = metadata.pixel_scaling  # edgepack.runtime.preprocess spec
        self._range = tuple(float(v) for v in self._scaling.get("range", (0.0, 1.0)))  # of float input
        self._out_lut = None  # int8/uint8 outputs: code (viewed as uint8) -> probability
        if np.dtype(output_dtype).kind in "iu":
            codes = np.arange(256, dtype=np.uint8).view(np.dtype(output_dtype))
            self._out_lut = self._dequantize_formula(codes)
        self._pixels = self._pixel_path()

    def _pixel_path(self):
        """The fastest function from uint8 pixels to model input that gives exactly the values of the
        documented formula (scale_pixels, then quantize): a table of the formula on all 256 pixel
        values per channel, and shortcuts used only where they equal that table."""
        channels = self.input_shape[-1]
        codes = np.repeat(np.arange(256, dtype=np.uint8)[:, None], channels, axis=1)  # (256, C)
        table = self._from_float(scale_pixels(codes, self._scaling))
        if not (table == table[:, :1]).all():  # per-channel mean/std: index (pixel, channel) flat
            flat, offsets = table.reshape(-1), np.arange(channels)
            return lambda x: flat[x.astype(np.intp) * channels + offsets]
        table = table[:, 0]
        if self._in_q is None:
            divisor = np.float32(self._scaling["divisor"])
            if not self._scaling.get("offset") and np.array_equal(
                    np.divide(codes[:, 0], divisor, dtype=np.float32), table):
                return lambda x: np.divide(x, divisor, dtype=np.float32)  # ~2x faster than a lookup
            return lambda x: np.take(table, x)
        shift = table.view(np.uint8)[0]
        if np.array_equal(table.view(np.uint8), codes[:, 0] + shift):  # int8: q = pixel - 128
            if shift == 0:  # uint8 input, scale 1/255, zero point 0: the pixels are the input
                return lambda x: np.ascontiguousarray(x).view(self.input_dtype)
            return lambda x: (x + shift).view(self.input_dtype)
        return lambda x: np.take(table, x)

    # --- what apps read

    @property
    def metadata(self) -> FileMetadata:
        """The file's edgepack metadata (a deep copy: changing it changes nothing here)."""
        return copy.deepcopy(self._metadata)

    @property
    def format(self) -> str:
        """Export format name, e.g. "onnx-fp32", "tflite-int8"."""
        return self._metadata.format

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path.name} format={self.format} runtime={self.runtime} "
                f"threads={self.threads}>")

    # --- inference

    def predict(self, images, channel_order: str = CHANNEL_ORDER) -> np.ndarray:
        """Probabilities, float32 (N, num_classes), for uint8 NHWC pixels (N, H, W, C) or one image
        (H, W, C) (then N = 1), or float images already scaled by the file's pixel_scaling.
        `channel_order`: "RGB" (PIL, imageio) or "BGR" (OpenCV's imread), reordered to the model's."""
        x = self._checked(images, channel_order)
        step = self.fixed_batch or CHUNK
        if len(x) == step or (self.fixed_batch is None and len(x) <= step):
            return self._dequantize(self._run(self._convert(x)))  # the common case: one engine call
        out = np.empty((len(x), self.num_classes), dtype=np.float32)
        for start in range(0, len(x), step):  # converted chunk by chunk: memory stays bounded
            chunk = self._convert(x[start:start + step])
            n = len(chunk)
            if self.fixed_batch and n < step:  # pad the last chunk of a fixed-batch model
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
            out[start:start + n] = self._dequantize(self._run(chunk))[:n]
        return out

    def classify(self, images, top_k: int = 1, channel_order: str = CHANNEL_ORDER) -> list[list[Prediction]]:
        """The `top_k` most probable classes of each image, best first (one list per image)."""
        if not isinstance(top_k, int | np.integer) or not 1 <= top_k <= self.num_classes:
            raise InputError(f"top_k must be a whole number from 1 to {self.num_classes}, got {top_k!r}")
        probs = self.predict(images, channel_order)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]  # ties: lower class id first
        return [[Prediction(self.class_names[c], int(c), float(p[c])) for c in row]
                for p, row in zip(probs, order, strict=True)]

    def prepare(self, images, channel_order: str = CHANNEL_ORDER) -> np.ndarray:
        """Check `images` and turn them into the batch the model file takes (dtype, scaling, int8)."""
        return self._convert(self._checked(images, channel_order))

    def _checked(self, images, channel_order: str = CHANNEL_ORDER) -> np.ndarray:
        """`images` as a checked array with a batch dimension (InputError saying expected vs got)."""
        try:
            x = np.asarray(images)
        except ValueError as e:  # ragged nested lists
            raise InputError(f"expected an array of images, got something numpy cannot stack ({e})") from None
        if x.ndim == len(self.input_shape):
            x = x[None]
        self._check_shape(x)
        if channel_order not in CHANNEL_ORDERS:
            raise InputError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, "
                             f"got {channel_order!r}")
        if channel_order != self._metadata.channel_order:
            x = x[..., ::-1]  # a view; _convert makes the engine's contiguous copy
        if x.dtype == np.uint8:
            return x
        if x.dtype.kind != "f":
            raise InputError(f"expected uint8 pixels or float images scaled by the model's pixel_scaling, "
                             f"got dtype {x.dtype}")
        if not np.isfinite(x).all():
            raise InputError("expected finite pixel values, got NaN or infinity")
        lo, hi = float(x.min()), float(x.max())
        if lo < self._range[0] or hi > self._range[1]:
            raise InputError(f"expected float images scaled to [{self._range[0]:g}, {self._range[1]:g}] "
                             f"({self._scaling.get('formula', 'pixel_scaling')}), "
                             f"got values from {lo:g} to {hi:g}")
        return x

    def _convert(self, x: np.ndarray) -> np.ndarray:
        """Checked uint8 pixels or float images -> the model's input tensor (C-contiguous)."""
        if x.dtype == np.uint8:
            return self._pixels(x)
        return np.ascontiguousarray(self._from_float(x.astype(np.float32, copy=False)))

    def _check_shape(self, x: np.ndarray) -> None:
        if x.ndim == len(self.input_shape) + 1 and x.shape[1:] == self.input_shape and x.shape[0] > 0:
            return
        want = "(N, " + ", ".join(map(str, self.input_shape)) + ")"
        one = "(" + ", ".join(map(str, self.input_shape)) + ")"
        if x.ndim == len(self.input_shape) + 1 and x.shape[1:] == self.input_shape:
            raise InputError(f"expected at least one image, got an empty batch of shape {x.shape}")
        hint = ""
        if x.ndim == 4 and x.shape[1] == self.input_shape[-1] and x.shape[2:] == self.input_shape[:2]:
            hint = " (channels first? transpose to NHWC with x.transpose(0, 2, 3, 1))"
        raise InputError(f"expected images of shape {want} or one image {one} (NHWC), "
                         f"got shape {x.shape}{hint}")

    def _from_float(self, x: np.ndarray) -> np.ndarray:
        """float32 images in [0, 1] -> model input: q = round(x / scale) + zero_point for int models."""
        if self._in_q is None:
            return x
        info = np.iinfo(self.input_dtype)
        q = np.round(x / np.float32(self._in_q["scale"])) + self._in_q["zero_point"]
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        """Model output -> float32 probabilities (a table lookup for int8/uint8 outputs)."""
        if self._out_lut is None:
            return y.astype(np.float32, copy=False)
        return self._out_lut[y.view(np.uint8)]

    def _dequantize_formula(self, q: np.ndarray) -> np.ndarray:
        """probability = (q - zero_point) * scale, in float32."""
        return ((q.astype(np.float32) - np.float32(self._out_q["zero_point"]))
                * np.float32(self._out_q["scale"]))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run one prepared batch through the engine; returns its raw output (N, num_classes)."""
        raise NotImplementedError
