"""Fine-tuning schedules and the matched controls built from them.

A schedule is every training phase from the trained model to a compressed one, each a tuple
(epochs, learning rate[, distill weight, temperature[, augmentation]]) as `phase` makes it; a polish
phase is a phase of its own. A compressed model's matched control is the uncompressed model
fine-tuned with the same schedule, one `finetune` run per phase (each starts a fresh optimizer, as
a compress phase does), so a gain is credited to compression only when the extra training alone does
not give it.

One rule, read by compress (what a run records), the pipeline (its controls), optimize (a trial's
control) and compare (which control matches a row).
"""

from __future__ import annotations

from edgepack.compress.distill import DEFAULTS as DISTILL_DEFAULTS


def phase(epochs, learning_rate, weight=0.0, temperature=DISTILL_DEFAULTS["temperature"],
          augment="none") -> tuple:
    """One fine-tuning phase as schedules record it: (epochs, learning rate), plus (distill weight,
    temperature) when it distilled or augmented, plus the augmentation when it augmented (so a
    schedule recorded before either existed reads the same). A matched control must share every
    phase's tuple."""
    p = (int(epochs), float(learning_rate))
    if weight or augment != "none":
        p += (float(weight), float(temperature))
    return p + (str(augment),) if augment != "none" else p


def own_phases(p: dict) -> tuple[tuple, ...]:
    """The phases of one compress step with resolved options `p`: its fine-tuning, then its polish
    phase if any (which distills and augments as the first phase did)."""
    how = (p.get("distill", 0.0), p.get("temperature", DISTILL_DEFAULTS["temperature"]),
           p.get("augment", "none"))
    phases = (phase(p["epochs"], p["learning_rate"], *how),)
    if p.get("polish_epochs"):
        phases += (phase(p["polish_epochs"], p["polish_learning_rate"], *how),)
    return phases


def finetune_params(p: tuple) -> dict:
    """The `finetune` options of a control phase that trains like phase `p`."""
    params = {"epochs": p[0], "learning_rate": p[1]}
    if len(p) > 2 and p[2]:
        params.update(distill=p[2], temperature=p[3])
    if len(p) > 4:
        params["augment"] = p[4]
    return params


def phase_of(recorded) -> tuple:
    """A recorded phase ([epochs, lr], [epochs, lr, weight, temperature] or [..., augment]) as `phase`
    makes it."""
    return phase(*recorded)


def phase_name(p: tuple) -> str:
    """`e2-lr0.001`, `e2-lr0.0001-kd0.5` (and `-T2` for a temperature other than the default),
    `e2-lr0.0001-flip` (augmented)."""
    name = f"e{p[0]}-lr{p[1]:g}"
    if len(p) > 2 and p[2]:
        name += f"-kd{p[2]:g}" + (f"-T{p[3]:g}" if p[3] != DISTILL_DEFAULTS["temperature"] else "")
    return name + (f"-{p[4]}" if len(p) > 4 else "")


def control_variants(schedules) -> list[dict]:
    """Pipeline variants of the uncompressed controls, one chain of `finetune` runs per distinct
    schedule, sharing their common first phases: `finetune-e2-lr0.001` for one phase, then
    `finetune-e2-lr0.001-e2-lr0.0001` from it, and so on."""
    made: dict[str, dict] = {}
    for sched in sorted(set(schedules), key=lambda s: (len(s), s)):
        source = "baseline"
        for i, ph in enumerate(sched):
            name = "finetune-" + "-".join(phase_name(p) for p in sched[:i + 1])
            made.setdefault(name, {"name": name, "technique": "finetune", "source": source,
                                   "params": finetune_params(ph)})  # a distilling phase's distills
            source = name
    return sorted(made.values(), key=lambda c: (c["name"].count("-lr"), c["name"]))
