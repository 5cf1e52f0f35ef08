"""What a target's checks measured for one file (a results.json row's "target" object)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Figures:
    """One file on one target: what `check` measured (results.json rows' "target"; null = not measured)."""

    target: str  # Target.name
    runs: bool  # the target runs this file
    reason: str | None = None  # one line: why the target does not run it (runs False)
    ops: list[str] = field(default_factory=list)  # the file's op kinds, graph order
    ram_bytes: int | None = None  # RAM the file needs there (tflm: the tensor arena, TFLM's own figure)
    flash_bytes: int | None = None  # flash the file takes as stored (not gzip'ed)
    compressed_flash_bytes: int | None = None  # after the target's weight compression (tflm: LUT), or null
    compressed_ram_bytes: int | None = None  # RAM of the compressed file (tflm: decoded weights in the arena)
    compression: dict | None = None  # the target's compression details (tflm: tensors, index_bitwidth)
    accuracy: float | None = None  # top-1 accuracy on the target's kernels, all compared test images
    agreement: float | None = None  # share of images with the same top-1 as the row's own runtime
    num_images: int | None = None  # images `accuracy` was measured on
    seconds: float | None = None  # time the target's checks took
    fits: bool | None = None  # within every budget given (as stored, or compressed: fits_as); null: not run
    fits_as: str | None = None  # "stored" or "compressed": the form that fits
    verdict: str | None = None  # "fits", "fits after compression: ...", "does not fit: RAM ... > ...",
    #                             "not runnable: <reason>"
    over: dict = field(default_factory=dict)  # budget name -> used / budget, for the form as stored

    def as_dict(self) -> dict:
        return asdict(self)


def unrunnable(target: str, reason: str, ops: list[str] | None = None) -> Figures:
    """The figures of a file the target does not run."""
    return Figures(target, runs=False, reason=reason, ops=ops or [], fits=False,
                   verdict=f"not runnable: {reason}")
