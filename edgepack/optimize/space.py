"""The search space: technique chains and the values each technique's options may take (one table).

A chain is run step by step (`edgepack compress` on the previous step's run folder). A chain whose
techniques are not all in edgepack.compress's TECHNIQUES is left out of the space, and an option a
technique does not take (its defaults lack it) is never suggested: so `cqat`, `pcqat` and the
two-phase pruning options (`polish_epochs`, `polish_learning_rate`) switch on by themselves once
compress has them. Optuna parameter names are "chain" and "<technique>.<option>": a technique's
options are shared by every chain that uses it, so the sampler learns from all of them. CHAIN_OPTIONS
("augment") are drawn once per trial and given to every step that takes them: a chain fine-tunes on
one kind of images, as its matched control does.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepack.compress.schedule import Phase, own_phases
from edgepack.fitting import AUGMENTATIONS

# Technique chains (TF-MOT's collaborative optimizations; every chain ends in an int8 export).
CHAINS: dict[str, tuple[str, ...]] = {
    "prune": ("prune",),  # two-phase when compress takes polish_epochs: prune at lr, polish at 1e-4
    "prune-2of4": ("prune-2of4",),
    "cluster": ("cluster",),
    "prune-cluster": ("prune", "cluster"),  # sparsity-preserving clustering on a pruned source
    "cluster-cqat": ("cluster", "cqat"),
    "prune-pqat": ("prune", "pqat"),
    "prune-cluster-pcqat": ("prune", "cluster", "pcqat"),
    "qat": ("qat",),
}

PRUNE_OPTIONS = {
    "epochs": (1, 2, 3),
    "learning_rate": (1e-3, 3e-4),  # phase 1 (pruning); the TF-MOT tutorial's 1e-3 and a gentler one
    "polish_epochs": (0, 1, 2),  # phase 2: masks held, low learning rate
    "polish_learning_rate": (1e-4,),
}
QAT_OPTIONS = {"epochs": (1, 2)}  # QAT epochs cost 2-3x a float epoch
# Option values per technique; a float range is (low, high, step).
OPTIONS: dict[str, dict[str, tuple]] = {
    "prune": {"sparsity": (0.5, 0.9, 0.05), **PRUNE_OPTIONS},
    "prune-2of4": PRUNE_OPTIONS,
    "cluster": {"clusters": (8, 12, 16, 24, 32), "epochs": (1, 2, 3)},
    "cqat": QAT_OPTIONS, "pcqat": QAT_OPTIONS, "pqat": QAT_OPTIONS, "qat": QAT_OPTIONS,
}
RANGES = {"sparsity"}  # options given as (low, high, step) rather than choices
# Options of the whole chain. Augmented fine-tuning: on validation (docs/results.md) flip + shift lifted
# the prune 0.7 -> cluster 16 chain by 1.7 points, flip by 0.5.
CHAIN_OPTIONS: dict[str, tuple] = {"augment": AUGMENTATIONS}
# The first trials of a new (not --quick) study, before the sampler takes over, at the sizes the report
# picks out (>= 10x and >= 15x smaller): TF-MOT's prune -> sparsity-preserving cluster -> PCQAT chain
# with the two-phase pruning recipe, on flipped and shifted images. Chosen from validation-scored runs,
# never from test figures (docs/results.md, "Chains tried after the third search"): as tflite-int8,
# prune 0.65 gave 74.08% validation at 11.5x and prune 0.8 72.34% at 15.7x, where the most accurate
# trials of three 60-minute searches without them were 72.48% at >= 10x and 70.06% at >= 15x.
# Optuna fills any option not given here.
_PCQAT_START = {"chain": "prune-cluster-pcqat", "prune.epochs": 3, "prune.learning_rate": 1e-3,
                "prune.polish_epochs": 1, "cluster.clusters": 8, "cluster.epochs": 2, "pcqat.epochs": 2,
                "augment": "flip-shift"}
STARTS: tuple[dict, ...] = (
    {**_PCQAT_START, "prune.sparsity": 0.65},
    {**_PCQAT_START, "prune.sparsity": 0.8},
)
# --quick: the smallest trial of each chain (tests): one epoch, no polish phase.
QUICK = {"epochs": (1,), "polish_epochs": (0,)}


@dataclass(frozen=True)
class Step:
    """One `edgepack compress` call of a trial."""

    technique: str
    params: dict  # the options passed to compress (the technique's defaults fill the rest)

    def as_dict(self) -> dict:
        return {"technique": self.technique, "params": dict(self.params)}


def starts(techniques) -> list[dict]:
    """STARTS whose chains and options compress has (the rest are dropped, as in suggest)."""
    chains = set(available_chains(techniques))
    keep = []
    for start in STARTS:
        if start["chain"] in chains:
            keep.append({k: v for k, v in start.items() if k == "chain" or k in CHAIN_OPTIONS or (
                k.split(".")[1] in techniques[k.split(".")[0]].defaults)})
    return keep


def available_chains(techniques) -> list[str]:
    """The chains whose every technique `techniques` (compress's TECHNIQUES) has."""
    return [name for name, steps in CHAINS.items() if all(t in techniques for t in steps)]


def options_for(technique: str, takes, quick: bool = False) -> dict[str, tuple]:
    """The searched options of `technique` that it takes (`takes`: its defaults' keys)."""
    table = {k: v for k, v in OPTIONS.get(technique, {}).items() if k in takes}
    if quick:
        table.update({k: v for k, v in QUICK.items() if k in table})
    return table


def suggest(trial, techniques, quick: bool = False) -> tuple[str, list[Step]]:
    """Ask an Optuna trial (ask/tell interface) for a chain and its steps' options."""
    chain = trial.suggest_categorical("chain", available_chains(techniques))
    whole = {key: trial.suggest_categorical(key, values) for key, values in CHAIN_OPTIONS.items()
             if any(key in techniques[t].defaults for t in CHAINS[chain])}
    steps = []
    for tech in CHAINS[chain]:
        defaults = techniques[tech].defaults  # a chain option at its default is not passed (as a user would)
        params = {k: v for k, v in whole.items() if k in defaults and v != defaults[k]}
        for key, values in options_for(tech, techniques[tech].defaults, quick).items():
            name = f"{tech}.{key}"
            if key in RANGES:
                params[key] = round(trial.suggest_float(name, values[0], values[1], step=values[2]), 4)
            else:
                params[key] = trial.suggest_categorical(name, values)
        steps.append(Step(tech, params))
    return chain, steps


def option_text(value) -> str:
    """An option's value as commands and tables show it: 0.001, 16, flip-shift."""
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def schedule(steps: list[Step], techniques) -> list[Phase]:
    """Every training phase of the chain, in order (edgepack.compress.schedule): what its matched
    fine-tune control trains for."""
    return [ph for s in steps for ph in own_phases({**techniques[s.technique].defaults, **s.params})]


def recipe_text(steps: list[dict]) -> str:
    """prune(sparsity=0.8, epochs=2, learning_rate=0.001) -> pqat(epochs=1)"""
    def step(s: dict) -> str:
        return f"{s['technique']}({', '.join(f'{k}={option_text(v)}' for k, v in s['params'].items())})"

    return " -> ".join(step(s) for s in steps)
