"""The options of `edgepack compare` (recorded in results.json as "options")."""

from __future__ import annotations

from dataclasses import dataclass

from edgepack.data import check_limits
from edgepack.errors import EdgepackError
from edgepack.report.pick import OBJECTIVES
from edgepack.target import Budget, check_budget

# Which int8 files also run on the engines' reference kernels (their accuracy on any CPU; LiteRT's are
# slow, ~2.5 ms an image on 2 threads): the Pareto front's and the recommended row's, or every one.
EXACT_REFERENCE = ("front", "all")


@dataclass(frozen=True)
class CompareOptions:
    limit_test: int | None = None  # class-balanced test subset (None: all 10,000 images)
    runs: int = 200  # timed batch-1 calls per latency figure
    warmup: int = 20  # untimed calls before timing
    predict_runs: int = 30  # timed Keras model.predict calls (each ~70 ms: 200 would cost 14 s a model;
    #                         warm-up for them is min(warmup, 3))
    predict_all: bool = False  # time model.predict for every Keras row (default: the baseline only)
    throughput_runs: int = 20  # timed batch-64 calls for throughput
    latency: bool = True  # False: accuracy and sizes only (--no-latency)
    keras_single_thread: bool = True  # time Keras rows on 1 thread in a child process
    max_drop: float | None = None  # points: recommend the smallest+fastest row within this of the baseline
    objective: str = "latency"  # what decides among those rows (edgepack.report.pick.OBJECTIVES)
    fail_over: float | None = None  # points: GateFailed if a row drops more than this (or fails)
    seed: int = 0  # test subset seed
    device_results: tuple[str, ...] = ()  # `edgepack bench --json` files from users' devices (reported apart)
    target: str = "host"  # where the files will run (edgepack.target.TARGETS); host: this machine
    ram_bytes: int | None = None  # the target's RAM budget (--ram), bytes; None: no limit
    flash_bytes: int | None = None  # the target's flash budget (--flash), bytes; None: no limit
    exact_reference: str = "front"  # int8 files on the reference kernels (EXACT_REFERENCE)

    @property
    def budget(self) -> Budget:
        return Budget(self.ram_bytes, self.flash_bytes)

    def check(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.predict_runs < 1 or self.throughput_runs < 1:
            raise EdgepackError("--runs must be >= 1 and --warmup >= 0")
        check_limits(limit_test=self.limit_test)
        if self.exact_reference not in EXACT_REFERENCE:
            raise EdgepackError(f"--exact-reference must be one of {', '.join(EXACT_REFERENCE)}, got "
                                f"{self.exact_reference!r}")
        if self.objective not in OBJECTIVES:
            raise EdgepackError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("max_drop", "fail_over"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 100:
                raise EdgepackError(f"--{name.replace('_', '-')} is in accuracy points, 0-100; got {v}")
        for name, v in (("--ram", self.ram_bytes), ("--flash", self.flash_bytes)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise EdgepackError(f"{name} is a size in bytes >= 1, got {v!r}")
        check_budget(self.target, self.budget)  # the --device-results files: compare checks them next
