"""Fine-tuning schedules and the matched controls built from them.

A schedule is every training phase from the trained model to a compressed one, each a `Phase`
(epochs, learning rate, distillation weight and temperature, augmentation); a polish phase is a phase
of its own. A compressed model's matched control is the uncompressed model fine-tuned with the same
schedule, one `finetune` run per phase (each starts a fresh optimizer, as a compress phase does), so a
gain is credited to compression only when the extra training alone does not give it.

Run folders record a phase as a JSON list (`Phase.record`): [epochs, lr], plus [distill weight,
temperature] when it distilled or augmented, plus the augmentation when it augmented, so schedules
recorded before either existed read the same (`phase_of`).

One rule, read by compress (what a run records), the pipeline (its controls), optimize (a trial's
control) and compare (which control matches a row).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepack.compress.distill import DEFAULTS as DISTILL_DEFAULTS


@dataclass(frozen=True, order=True)
class Phase:
    """One fine-tuning phase. Two phases are equal when their records are: a matched control must share
    every phase."""

    epochs: int
    learning_rate: float  # adam's
    distill: float = 0.0  # weight of the teacher's soft labels in the loss (0: no distillation)
    temperature: float = DISTILL_DEFAULTS["temperature"]  # of the distillation softmax
    augment: str = "none"  # edgepack.fitting.AUGMENTATIONS

    def __post_init__(self):
        # JSON gives 1 for 1.0; a temperature is not recorded (so means the default) when the phase
        # neither distills nor augments
        keep_t = self.distill or self.augment != "none"
        for name, value in (("epochs", int(self.epochs)), ("learning_rate", float(self.learning_rate)),
                            ("distill", float(self.distill)), ("augment", str(self.augment)),
                            ("temperature", float(self.temperature if keep_t
                                                  else DISTILL_DEFAULTS["temperature"]))):
            object.__setattr__(self, name, value)

    def record(self) -> list:
        """The phase as run folders record it (JSON)."""
        rec = [self.epochs, self.learning_rate]
        if self.distill or self.augment != "none":
            rec += [self.distill, self.temperature]
        return rec + [self.augment] if self.augment != "none" else rec

    def __iter__(self):
        """The recorded form, so list(phase) == phase.record()."""
        return iter(self.record())

    @property
    def name(self) -> str:
        """`e2-lr0.001`, `e2-lr0.0001-kd0.5` (and `-T2` for a temperature other than the default),
        `e2-lr0.0001-flip` (augmented)."""
        name = f"e{self.epochs}-lr{self.learning_rate:g}"
        if self.distill:
            name += f"-kd{self.distill:g}" + (f"-T{self.temperature:g}"
                                              if self.temperature != DISTILL_DEFAULTS["temperature"] else "")
        return name + (f"-{self.augment}" if self.augment != "none" else "")

    def finetune_params(self) -> dict:
        """The `finetune` options of a control phase that trains like this one."""
        params = {"epochs": self.epochs, "learning_rate": self.learning_rate}
        if self.distill:
            params.update(distill=self.distill, temperature=self.temperature)
        if self.augment != "none":
            params["augment"] = self.augment
        return params


def phase_of(recorded) -> Phase:
    """A recorded phase ([epochs, lr], [epochs, lr, weight, temperature] or [..., augment])."""
    return Phase(*recorded)


def own_phases(p: dict) -> tuple[Phase, ...]:
    """The phases of one compress step with resolved options `p`: its fine-tuning, then its polish
    phase if any (which distills and augments as the first phase did)."""
    how = {k: p[k] for k in ("distill", "temperature", "augment") if k in p}
    phases = (Phase(p["epochs"], p["learning_rate"], **how),)
    if p.get("polish_epochs"):
        phases += (Phase(p["polish_epochs"], p["polish_learning_rate"], **how),)
    return phases


def control_variants(schedules) -> list[dict]:
    """Pipeline variants of the uncompressed controls, one chain of `finetune` runs per distinct
    schedule, sharing their common first phases: `finetune-e2-lr0.001` for one phase, then
    `finetune-e2-lr0.001-e2-lr0.0001` from it, and so on."""
    made: dict[str, dict] = {}
    for sched in sorted(set(schedules), key=lambda s: (len(s), s)):
        source = "baseline"
        for i, ph in enumerate(sched):
            name = "finetune-" + "-".join(p.name for p in sched[:i + 1])
            made.setdefault(name, {"name": name, "technique": "finetune", "source": source,
                                   "params": ph.finetune_params()})  # a distilling phase's distills
            source = name
    return sorted(made.values(), key=lambda c: (c["name"].count("-lr"), c["name"]))
