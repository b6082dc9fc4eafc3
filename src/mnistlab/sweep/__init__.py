"""Hyperparameter sweeps: ``mnistlab sweep FILE`` (spec.py: the file; runner.py: the study; results.py: the outputs).

Only runner.py and untried.py (the sampler of finite spaces) import Optuna, and only when a
sweep runs: reading and checking a sweep file works without the optional extra.
"""

from .results import TrialRow, best_row, format_table, objective_png, write_results
from .runner import SweepInterrupted, SweepResult, require_optuna, run_sweep
from .spec import Param, SweepSpec, apply_params, grid_points, load_sweep, sweep_from_dict

__all__ = [
    "Param",
    "SweepInterrupted",
    "SweepResult",
    "SweepSpec",
    "TrialRow",
    "apply_params",
    "best_row",
    "format_table",
    "grid_points",
    "load_sweep",
    "objective_png",
    "require_optuna",
    "run_sweep",
    "sweep_from_dict",
    "write_results",
]
