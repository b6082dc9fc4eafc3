"""Audit 135: files written by older mnistlab versions (run folders, checkpoints, config.toml, sweep folders),
used with the current code. The old formats are rebuilt by hand here from what those versions wrote (learned by
running them from the project's history); nothing reads the git history at test time."""

from __future__ import annotations

import pytest

from mnistlab.config import config_from_dict, load_config, stored_before_own_defaults
from mnistlab.config import tomllib  # tomli on Python 3.10
from mnistlab.sweep import sweep_from_dict
from mnistlab.sweep.spec import describe_changes, fingerprint, fingerprint_changes


def _sweep(base, params=None):
    return sweep_from_dict({"train": {"epochs": 1}, **base,
                            "sweep": {"sampler": "random", "trials": 3, "params": params or {
                                "optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}})


def _as_stored_by_old_version(spec, **old_values):
    """The fingerprint a version before the keys became unset stored: the same, with their old defaults."""
    stored = fingerprint(spec)
    for dotted, value in old_values.items():
        section, key = dotted.split("__")
        stored["base"][section][key] = value
    return stored


@pytest.mark.parametrize("criterion", ["gl", "patience", "none"])
def test_a_sweep_begun_when_alpha_defaulted_to_5_continues_under_a_criterion_that_trains_alike(criterion):
    # Before early_stopping.alpha became unset, every study stored alpha = 5.0; under GL unset is 5 (GL_ALPHA),
    # and patience or none do not read it: the same search, refused as "a different sweep (it differs in: base)".
    spec = _sweep({"early_stopping": {"criterion": criterion}})
    stored = _as_stored_by_old_version(spec, early_stopping__alpha=5.0)
    assert fingerprint_changes(fingerprint(spec), stored) == []


def test_a_sweep_begun_when_optimizer_keys_had_one_default_continues():
    # Older still: momentum 0.9, eps 1e-8 and weight_decay 0.0 were stored for every optimizer (Adam's unset
    # eps and weight_decay are those; it does not read momentum).
    spec = _sweep({"optimizer": {"name": "adam"}, "early_stopping": {"criterion": "gl"}})
    stored = _as_stored_by_old_version(spec, early_stopping__alpha=5.0, optimizer__momentum=0.9,
                                       optimizer__eps=1e-8, optimizer__weight_decay=0.0)
    assert fingerprint_changes(fingerprint(spec), stored) == []


def test_an_old_sweep_whose_trials_would_now_train_otherwise_is_still_another_search():
    # PQ's unset alpha is 0.5, not the 5.0 the old study trained with; AdamW's unset weight_decay is 0.01
    for base, old, said in (
        ({"early_stopping": {"criterion": "pq"}}, {"early_stopping__alpha": 5.0}, "early_stopping.alpha"),
        ({"optimizer": {"name": "adamw"}}, {"optimizer__weight_decay": 0.0}, "optimizer.weight_decay"),
    ):
        spec = _sweep(base)
        stored = _as_stored_by_old_version(spec, **old)
        assert fingerprint_changes(fingerprint(spec), stored) == ["base"]
        assert said in describe_changes(fingerprint(spec), stored)
    # a searched criterion that includes PQ: its trials differ too
    spec = _sweep({}, {"early_stopping.criterion": {"type": "categorical", "choices": ["gl", "pq"]}})
    assert fingerprint_changes(fingerprint(spec), _as_stored_by_old_version(spec, early_stopping__alpha=5.0)) == [
        "base"]
    # and one that is GL alone is the same search
    spec = _sweep({}, {"early_stopping.criterion": {"type": "categorical", "choices": ["gl", "none"]}})
    assert fingerprint_changes(fingerprint(spec), _as_stored_by_old_version(spec, early_stopping__alpha=5.0)) == []


def test_a_sweep_that_now_sets_the_old_default_explicitly_is_still_the_same_search():
    spec = _sweep({"early_stopping": {"criterion": "gl", "alpha": 5.0}})
    stored = _as_stored_by_old_version(spec, early_stopping__alpha=5.0)
    assert fingerprint_changes(fingerprint(spec), stored) == []


# [optimizer] of a run's config.toml as versions before the optimizers' own defaults wrote it (every key).
_OLD_RUN_CONFIG = """[model]
name = "cnn"
width = 0.25
# channels = (default)

[optimizer]
name = "{name}"
lr = 0.01
momentum = 0.9
nesterov = false
betas = [0.7, 0.9]
eps = 1e-08
weight_decay = 0.0

[early_stopping]
criterion = "gl"
alpha = 5.0
"""


def test_an_old_runs_config_toml_reads_as_resume_reads_its_checkpoint(tmp_path):
    # `train --config OLD_RUN/config.toml` warned "optimizer.momentum = 0.9 is not used by the adam optimizer":
    # the 0.9 was mnistlab's own old default, stored for every optimizer; --resume reads it as unset.
    path = tmp_path / "config.toml"
    path.write_text(_OLD_RUN_CONFIG.format(name="adam"))
    cfg = load_config(path)
    assert (cfg.optimizer.momentum, cfg.optimizer.eps) == (None, None)
    assert (cfg.optimizer.setting("eps"), cfg.optimizer.weight_decay) == (1e-8, 0.0)  # trains as it did
    assert cfg == config_from_dict(stored_before_own_defaults(tomllib.loads(path.read_text())))
    assert cfg.early_stopping.alpha == 5.0  # explicit in the file: kept (PQ would read it)


def test_a_hand_written_config_keeps_what_it_sets(tmp_path):
    # RMSprop's unset momentum is 0, not 0.9: a file that sets it keeps it, whatever else it holds
    path = tmp_path / "config.toml"
    path.write_text(_OLD_RUN_CONFIG.format(name="rmsprop"))
    assert load_config(path).optimizer.momentum == 0.9
    path.write_text('[optimizer]\nname = "adam"\nmomentum = 0.9\n')
    assert load_config(path).optimizer.momentum == 0.9  # not a file mnistlab wrote: its warning stays
