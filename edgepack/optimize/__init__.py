"""`edgepack optimize`: search compression chains and recipes for the smallest or fastest int8 file
within an accuracy goal (Optuna; validation split; resumable). See docs/optimize.md."""

from edgepack.optimize.search import SearchOptions, optimize
from edgepack.optimize.trial import run_trial, run_trials

__all__ = ["SearchOptions", "optimize", "run_trial", "run_trials"]
