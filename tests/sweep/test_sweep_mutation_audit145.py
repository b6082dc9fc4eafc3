"""Audit 145: tests that kill mutants of the sweep (spec.py, runner.py, results.py) the other sweep tests let live.

Each test names what it pins down; most drive a unit directly, a few run a sweep with ``fake_train`` (conftest.py).
"""

from __future__ import annotations

import pytest

from sweep_helpers import import_optuna

optuna = import_optuna()  # skipped without Optuna, but a failure under CI=true (see sweep_helpers)

from mnistlab.errors import ConfigError  # noqa: E402
from mnistlab.sweep import load_sweep, run_sweep, sweep_from_dict  # noqa: E402
from mnistlab.sweep.spec import Param  # noqa: E402

LR = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def sweep(params=None, base=None, **keys):
    return sweep_from_dict({"train": {"epochs": 2}, **(base or {}),
                            "sweep": {**keys, "params": LR if params is None else params}})


# --- spec.py: Param ---------------------------------------------------------------------------------------------

def test_an_int_range_with_a_step_gives_its_values_on_the_step():
    p = Param("train.batch_size", "int", low=32, high=128, step=32)
    assert p.size() == 4
    assert [p.label_at(i) for i in range(4)] == [32, 64, 96, 128]
    assert [p.index_of(v) for v in (32, 64, 96, 128)] == [0, 1, 2, 3]


def test_a_stepped_float_value_with_float_error_below_its_place_has_that_place():
    # (0.7 - 0.1) / 0.1 is 5.999999999999999: cut rather than rounded, 0.7 would be the sixth value, not the seventh.
    p = Param("optimizer.lr", "float", low=0.1, high=1.0, step=0.1)
    assert p.size() == 10
    assert [p.index_of(p.label_at(i)) for i in range(10)] == list(range(10))
    assert p.index_of(0.7) == 6 and p.index_of(0.1 + 6 * 0.1) == 6


# --- spec.py: load_sweep and sweep_from_dict ----------------------------------------------------------------------

def test_trials_0_from_the_command_line_is_named_as_the_flag(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\nparams = {"optimizer.lr" = [0.001, 0.01]}\n')
    with pytest.raises(ConfigError, match=r"--trials must be 1 or more, got 0$"):
        load_sweep(path, trials=0)
    with pytest.raises(ConfigError, match=r"--workers must be 1 or more, got 0$"):
        load_sweep(path, workers=0)


def test_an_ema_objective_with_ema_off_in_the_base_names_the_config():
    with pytest.raises(ConfigError, match=r"^sweep.objective = 'ema_val_loss' needs \[ema\] enabled = true in the "
                                          r"config$"):
        sweep(objective="ema_val_loss")


def test_the_seed_limit_is_exclusive():
    assert sweep(seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ConfigError, match=r"sweep.seed must be below 2\*\*32"):
        sweep(seed=2**32)


def test_a_blank_study_name_is_refused_and_one_with_spaces_is_trimmed():
    with pytest.raises(ConfigError, match="sweep.study_name must be a non-empty string, got '  '"):
        sweep(study_name="  ")
    assert sweep(study_name=" lr search ").study_name == "lr search"


def test_as_many_trials_as_points_is_no_warning_and_one_more_is():
    from mnistlab.sweep.spec import too_many_trials

    params = {"optimizer.name": ["adam", "sgd"], "train.batch_size": [64, 128]}
    assert too_many_trials(sweep(params, sampler="random", trials=4)) is None
    note = too_many_trials(sweep(params, sampler="random", trials=5))
    assert "5 trials asked for, but the params take only 4" in note


def test_the_grid_hint_is_given_only_where_every_param_is_a_list():
    from mnistlab.sweep.spec import too_many_trials

    mixed = {"optimizer.name": ["adam", "sgd"], "train.batch_size": {"type": "int", "low": 64, "high": 128, "step": 64}}
    note = too_many_trials(sweep(mixed, sampler="random", trials=5))
    assert note.endswith("so the sweep ends after 4") and "grid" not in note


def test_a_sqlite_url_with_an_empty_path_is_in_memory_and_refused():
    # SQLAlchemy reads sqlite:/// (no file name) as an in-memory database, as it reads sqlite://.
    with pytest.raises(ConfigError, match="is an in-memory database"):
        sweep(storage="sqlite:///")


def test_a_boolean_is_not_a_count():
    # TOML's true is a bool, and Python's bool an int: trials = true would have run one trial.
    with pytest.raises(ConfigError, match="sweep.trials must be an integer of 1 or more, got True"):
        sweep(trials=True)


@pytest.mark.parametrize("high", [float("inf"), float("nan")])
def test_a_range_bound_that_is_not_finite_is_refused_as_such(high):
    with pytest.raises(ConfigError, match=r'"optimizer.lr": high must be a finite number, got (inf|nan)$'):
        sweep({"optimizer.lr": {"type": "float", "low": 1e-4, "high": high}})


@pytest.mark.parametrize("spec, message", [
    ({"type": "int", "low": 2, "high": 2}, "low must be below high, got low = 2 and high = 2"),
    ({"type": "int", "low": 1, "high": 4, "step": 0}, "step must be greater than zero, got 0"),
    ({"type": "int", "low": 1, "high": 4, "step": 1, "log": True}, "step and log = true cannot be combined"),
])
def test_a_range_that_is_empty_or_has_no_usable_step_is_refused(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        sweep({"train.epochs": spec})


def test_a_point_missing_one_of_the_params_has_no_key():
    from mnistlab.sweep.spec import point_key

    s = sweep({"optimizer.name": ["adam", "sgd"], "train.batch_size": [64, 128]}, sampler="random")
    assert point_key(s, {"optimizer.name": "sgd", "train.batch_size": 128}) == (1, 1)
    assert point_key(s, {"optimizer.name": "sgd"}) is None and point_key(s, {}) is None


# --- spec.py: what makes a sweep the same search (fingerprint) ---------------------------------------------------

def changes(mine, stored):
    from mnistlab.sweep.spec import describe_changes, fingerprint, fingerprint_changes

    a, b = fingerprint(mine), fingerprint(stored)
    return fingerprint_changes(a, b), describe_changes(a, b)


def test_another_pruner_is_another_search():
    assert changes(sweep(pruner="median"), sweep()) == (
        ["pruner"], 'sweep.pruner = "median" (the study\'s: "none")')


def test_a_range_sampled_in_log_space_is_another_search_than_the_same_range_sampled_evenly():
    flat = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}
    assert changes(sweep(), sweep(flat)) == (
        ["params"], 'sweep.params."optimizer.lr" = {type = "float", low = 0.0001, high = 0.01, log = true} '
                    '(the study\'s: {type = "float", low = 0.0001, high = 0.01})')


def test_the_refusal_lists_six_changes_and_counts_the_rest():
    from mnistlab.sweep.spec import describe_changes, fingerprint

    base = {"train": {"epochs": 3, "batch_size": 32, "seed": 5, "label_smoothing": 0.1},
            "optimizer": {"name": "sgd", "weight_decay": 0.5}, "model": {"name": "lenet"}}
    text = describe_changes(fingerprint(sweep(base=base, pruner="median")), fingerprint(sweep()))
    details = text.split("; ")
    assert len(details) == 7 and details[-1] == "and 2 more"
    assert details[0].startswith("model.name = \"lenet\" (the study's: ")


def test_a_study_that_set_another_value_than_the_old_default_is_another_search_when_the_key_is_now_unset():
    from mnistlab.sweep.spec import describe_changes, fingerprint, fingerprint_changes

    spec = sweep(base={"early_stopping": {"criterion": "gl"}})
    stored = fingerprint(spec)
    stored["base"]["early_stopping"]["alpha"] = 3.0  # GL trained at 3 then; unset, it trains at 5 now
    assert fingerprint_changes(fingerprint(spec), stored) == ["base"]
    assert describe_changes(fingerprint(spec), stored) == "early_stopping.alpha = none (the study's: 3.0)"


def test_a_param_the_study_searched_and_this_sweep_does_not_is_named():
    assert changes(sweep(), sweep({**LR, "train.batch_size": [64, 128]})) == (
        ["params"], 'sweep.params."train.batch_size" = not searched (the study\'s: [64, 128])')


# --- results.py: ranking -------------------------------------------------------------------------------------------

def row(number, state, value):
    from mnistlab.sweep.results import TrialRow

    return TrialRow(number=number, state=state, value=value, labels={}, params={}, epochs=1, seconds=1.0,
                    run_dir=None, note="")


def order(rows, direction):
    from mnistlab.sweep.results import sort_rows

    return [r.number for r in sort_rows(rows, direction)]


def test_a_loss_ranks_the_lowest_first_and_an_accuracy_the_highest():
    from mnistlab.sweep.results import best_row

    rows = [row(0, "COMPLETE", 0.3), row(1, "COMPLETE", 0.1), row(2, "COMPLETE", 0.2)]
    assert order(rows, "minimize") == [1, 2, 0] and best_row(rows, "minimize").number == 1
    assert order(rows, "maximize") == [0, 2, 1] and best_row(rows, "maximize").number == 0


def test_complete_trials_rank_before_pruned_ones_then_the_rest_and_ties_go_by_trial_number():
    from mnistlab.sweep.results import best_row

    rows = [row(0, "FAIL", None), row(1, "PRUNED", 0.99), row(2, "COMPLETE", None), row(3, "COMPLETE", 0.5),
            row(4, "RUNNING", None), row(5, "COMPLETE", 0.5), row(6, "PRUNED", None)]
    assert order(rows, "maximize") == [3, 5, 2, 1, 6, 0, 4]
    # the best is a complete trial with a value: the pruned one's 0.99 stopped early
    assert best_row(rows, "maximize").number == 3
    assert best_row([row(1, "PRUNED", 0.99), row(2, "COMPLETE", None)], "maximize") is None


# --- results.py: the table and the plot ----------------------------------------------------------------------------

def test_results_csv_leaves_a_value_a_trial_never_drew_empty_and_writes_an_unset_one_as_none(tmp_path):
    from mnistlab.sweep.results import write_csv

    s = sweep({"train.grad_clip": ["none", 1.0], "train.batch_size": [64, 128]}, sampler="random")
    unset, died = row(0, "COMPLETE", 0.987654321), row(1, "FAIL", None)
    unset.params = {"train.grad_clip": None, "train.batch_size": 64}
    died.params = {"train.grad_clip": 1.0}  # it failed drawing the batch size
    lines = write_csv([unset, died], s, tmp_path / "results.csv").read_text().splitlines()
    # the value in full (the printed table rounds it to 4 digits)
    assert lines[1].startswith("0,COMPLETE,0.987654321,none,64,") and lines[2].startswith("1,FAIL,,1.0,,")


def test_the_best_so_far_line_of_a_loss_follows_the_lowest(monkeypatch):
    import matplotlib.axes

    from mnistlab.sweep.results import objective_png

    drawn = []
    monkeypatch.setattr(matplotlib.axes.Axes, "step", lambda self, xs, ys, **kw: drawn.append((list(xs), list(ys))))
    s = sweep(objective="val_loss")
    rows = [row(0, "COMPLETE", 0.3), row(1, "COMPLETE", 0.5), row(2, "PRUNED", 0.05), row(3, "COMPLETE", 0.2)]
    objective_png(rows, s)
    # a pruned trial's value is drawn, but the best so far is that of complete trials
    assert drawn == [([0, 1, 2, 3], [0.3, 0.3, 0.3, 0.2])]


def test_the_printed_table_shows_values_to_4_digits_unset_as_none_and_undrawn_as_a_dash():
    from mnistlab.sweep.results import format_table

    s = sweep({"optimizer.lr": [0.00123, 0.1], "train.grad_clip": ["none", 1.0]}, sampler="random")
    done, died = row(0, "COMPLETE", 0.912345), row(1, "FAIL", None)
    done.params, died.params = {"optimizer.lr": 0.00123, "train.grad_clip": None}, {"optimizer.lr": 0.1}
    lines = format_table([done, died], s).splitlines()
    assert lines[0].split() == ["trial", "state", "val_accuracy", "optimizer.lr", "train.grad_clip", "epochs",
                                "seconds"]
    assert lines[2].split() == ["0", "complete", "0.9123", "0.00123", "none", "1", "1.0"]
    assert lines[3].split() == ["1", "fail", "-", "0.1", "-", "1", "1.0"]


def test_a_sweep_of_a_key_whose_old_default_the_study_stored_in_its_base_continues():
    # Every trial sets optimizer.momentum itself: the 0.9 an older version stored in the base was never trained with.
    from mnistlab.sweep.spec import fingerprint, fingerprint_changes

    spec = sweep({"optimizer.momentum": [0.8, 0.95]}, base={"optimizer": {"name": "sgd"}}, sampler="random")
    stored = fingerprint(spec)
    stored["base"]["optimizer"]["momentum"] = 0.9
    assert fingerprint_changes(fingerprint(spec), stored) == []



def test_a_searched_keys_base_value_is_not_part_of_the_search():
    # Every trial sets optimizer.lr: a base lr changed between two runs of the sweep trains nothing differently.
    from mnistlab.sweep.spec import fingerprint, fingerprint_changes

    stored = fingerprint(sweep({"optimizer.lr": [0.001, 0.01]}, base={"optimizer": {"lr": 0.003}}, sampler="random"))
    mine = fingerprint(sweep({"optimizer.lr": [0.001, 0.01]}, base={"optimizer": {"lr": 0.05}}, sampler="random"))
    assert fingerprint_changes(mine, stored) == []
    # a key the study did not search keeps its base value in the comparison: its trials trained with it
    searched_now = fingerprint(sweep({"optimizer.lr": [0.001, 0.01], "train.batch_size": [64, 128]},
                                     base={"train": {"epochs": 2, "batch_size": 32}}, sampler="random"))
    assert fingerprint_changes(searched_now, stored) == ["base", "params"]

# --- runner.py -----------------------------------------------------------------------------------------------------

def test_pruned_trials_count_towards_the_total(fake_train, tmp_path):
    # lr >= 1 diverges in fake_train: each trial ends pruned, and two are all the sweep asked for.
    s = sweep({"optimizer.lr": [1.0, 2.0, 3.0, 4.0]}, sampler="random", trials=2)
    result = run_sweep(s, out=tmp_path, quiet=True)
    assert len(fake_train) == 2 and [r.state for r in result.rows] == ["PRUNED", "PRUNED"]


def test_a_trial_another_live_worker_is_running_counts_towards_the_total(fake_train, tmp_path):
    import os
    import socket

    from mnistlab.sweep.runner import open_study, storage_url, suggest

    s = sweep({"optimizer.lr": [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]}, sampler="random", trials=3)
    other = open_study(s, storage_url(s, tmp_path), worker=1).ask()  # still training, in a live process
    other.set_user_attr("host", socket.gethostname())
    other.set_user_attr("pid", os.getpid())
    suggest(other, s)
    run_sweep(s, out=tmp_path, quiet=True)
    assert len(fake_train) == 2
