"""Memory budgets of a device: `--ram 64KiB --flash 256KiB`, parsed strictly, and whether a file fits.

A size is a whole number followed at once by its unit, no space (one shell word): B, KiB or MiB
(powers of 1024, as TFLM's arena and a part's datasheet memory are counted) or kB or MB (powers of
1000). Units are case-sensitive ("kb" could mean kilobits); "64 kB", "1.5MiB", "64", "-1", "0" and
"abc" are refused with one line.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from edgepack.errors import EdgepackError
from edgepack.target.figures import Figures

UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "kB": 1000, "MB": 1000**2}
_SIZE = re.compile(r"(\d+)(" + "|".join(UNITS) + r")")


def parse_bytes(text: str, what: str = "") -> int:
    """"64KiB" -> 65536. EdgepackError (one line, with an example) for anything else; `what` names the
    option in the message ("--ram")."""
    m = _SIZE.fullmatch(str(text))
    if m is None or int(m.group(1)) == 0:
        name = f"{what} " if what else ""
        raise EdgepackError(f"{name}{text!r} is not a size: write a whole number > 0 and a unit, no space, "
                            f"e.g. 64KiB or 1MB (units: {', '.join(UNITS)})")
    return int(m.group(1)) * UNITS[m.group(2)]


def show_bytes(n: int | None) -> str:
    """Bytes for people: "40,740 B (39.8 KiB)"."""
    if n is None:
        return "-"
    return f"{n:,} B ({n / 1024:.1f} KiB)"


@dataclass(frozen=True)
class Budget:
    """The memory a part offers the model; None = no limit given."""

    ram_bytes: int | None = None  # for the tensor arena (--ram)
    flash_bytes: int | None = None  # for the model file as stored (--flash)

    @classmethod
    def parse(cls, ram: str | None = None, flash: str | None = None) -> Budget:
        return cls(None if ram is None else parse_bytes(ram, "--ram"),
                   None if flash is None else parse_bytes(flash, "--flash"))

    @property
    def given(self) -> bool:
        return self.ram_bytes is not None or self.flash_bytes is not None

    def overs(self, ram: int | None, flash: int | None) -> dict[str, float]:
        """Each budget the figures exceed -> figure / budget (> 1). A missing figure exceeds nothing."""
        out = {}
        for name, used, limit in (("ram", ram, self.ram_bytes), ("flash", flash, self.flash_bytes)):
            if used is not None and limit is not None and used > limit:
                out[name] = used / limit
        return out

    def _words(self, ram: int | None, flash: int | None) -> str:
        """"RAM 40,740 B <= 65,536 B; flash 300,000 B > 262,144 B" for the budgets given."""
        parts = []
        for name, used, limit in (("RAM", ram, self.ram_bytes), ("flash", flash, self.flash_bytes)):
            if limit is not None and used is not None:
                parts.append(f"{name} {used:,} B {'<=' if used <= limit else '>'} {limit:,} B")
        return "; ".join(parts)

    def judge(self, fig: Figures) -> Figures:
        """`fig` with fits, fits_as, verdict and over filled: as stored first, then compressed."""
        if not fig.runs:
            return fig
        over = self.overs(fig.ram_bytes, fig.flash_bytes)
        if not self.given:
            return dataclasses.replace(fig, fits=True, fits_as="stored", verdict="runs (no budget given)")
        if not over:
            return dataclasses.replace(fig, fits=True, fits_as="stored", over={},
                                       verdict="fits: " + self._words(fig.ram_bytes, fig.flash_bytes))
        small = (fig.compressed_flash_bytes, fig.compressed_ram_bytes)
        if small[0] is not None and not self.overs(small[1], small[0]):
            words = self._words(small[1], small[0])
            return dataclasses.replace(fig, fits=True, fits_as="compressed", over=over,
                                       verdict=f"fits after weight compression: {words}")
        return dataclasses.replace(fig, fits=False, fits_as=None, over=over,
                                   verdict="does not fit: " + self._words(fig.ram_bytes, fig.flash_bytes))

    def as_dict(self) -> dict:
        return {"ram_bytes": self.ram_bytes, "flash_bytes": self.flash_bytes}
