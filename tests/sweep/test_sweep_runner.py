"""The study machinery, driven with ``fake_train`` (see conftest.py): sampling, counting, pruning, continuing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sweep_helpers import FakeHandle, fake_accuracy, import_optuna

optuna = import_optuna()  # skipped without Optuna, but a failure under CI=true (see sweep_helpers)

from mnistlab.errors import ConfigError, MnistlabError  # noqa: E402
from mnistlab.sweep import grid_points, run_sweep, sweep_from_dict  # noqa: E402
from mnistlab.sweep.runner import (  # noqa: E402
    ReportToTrial, make_pruner, most_epochs, open_study, require_optuna, storage_url,
)

S = optuna.trial.TrialState


def spec(params, epochs=2, base=None, **sweep):
    return sweep_from_dict({"train": {"epochs": epochs}, **(base or {}), "sweep": {**sweep, "params": params}})


def study_of(s, out):
    return open_study(s, storage_url(s, out))


def test_grid_runs_every_point_once_and_writes_the_results(fake_train, tmp_path):
    s = spec({"optimizer.lr": [0.001, 0.01, 0.1], "model.channels": [[4, 8], [8, 16]]}, sampler="grid")
    result = run_sweep(s, out=tmp_path, quiet=True)
    ran = sorted((c.optimizer.lr, c.model.channels) for c in fake_train)
    assert ran == sorted((lr, ch) for lr in (0.001, 0.01, 0.1) for ch in ((4, 8), (8, 16)))
    assert sorted(p.name for p in tmp_path.glob("trial-*")) == [f"trial-{i:04d}" for i in range(6)]
    # Sorted by the objective: lr 0.01 peaks at 0.9 (fake_accuracy), best first.
    assert [r.state for r in result.rows] == ["COMPLETE"] * 6
    values = [r.value for r in result.rows]
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(0.9)
    assert result.rows[0].params["optimizer.lr"] == 0.01
    assert {"results", "plot", "best"} <= set(result.files) and (tmp_path / "study.db").is_file()
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[0] == "trial,state,val_accuracy,optimizer.lr,model.channels,epochs,seconds,run_dir,note"
    assert len(csv) == 7 and ",0.01," in csv[1]
    assert (tmp_path / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_seed_repeats_the_same_trials(fake_train, tmp_path, sampler):
    params = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
              "train.batch_size": {"type": "int", "low": 32, "high": 256, "step": 32},
              "optimizer.name": ["sgd", "adam"]}

    def lrs(seed, out):
        fake_train.clear()
        run_sweep(spec(params, sampler=sampler, trials=3, seed=seed), out=tmp_path / out, quiet=True)
        return [(c.optimizer.lr, c.train.batch_size, c.optimizer.name) for c in fake_train]

    first = lrs(0, "a")
    assert lrs(0, "b") == first
    assert len(set(first)) == 3 and all(1e-4 <= lr <= 1e-1 and bs % 32 == 0 for lr, bs, _ in first)


def test_a_rerun_continues_to_the_total_without_repeating_trials(fake_train, tmp_path):
    params = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    run_sweep(spec(params, sampler="random", trials=2), out=tmp_path, quiet=True)
    assert len(fake_train) == 2
    result = run_sweep(spec(params, sampler="random", trials=5), out=tmp_path, quiet=True)
    assert len(fake_train) == 5 and len({c.optimizer.lr for c in fake_train}) == 5  # a new stream after a rerun
    assert sorted(r.number for r in result.rows) == [0, 1, 2, 3, 4]
    run_sweep(spec(params, sampler="random", trials=5), out=tmp_path, quiet=True)
    assert len(fake_train) == 5  # the total is reached: nothing more runs


def test_a_grid_rerun_runs_only_the_missing_points(fake_train, tmp_path):
    params = {"optimizer.lr": [0.001, 0.01, 0.1]}
    run_sweep(spec(params, sampler="grid", trials=1), out=tmp_path, quiet=True)
    run_sweep(spec(params, sampler="grid"), out=tmp_path, quiet=True)
    assert [c.optimizer.lr for c in fake_train] == [0.001, 0.01, 0.1]


def test_a_grid_point_left_queued_by_an_interrupted_sweep_is_run_and_so_is_every_other(fake_train, tmp_path):
    # Ctrl-C (or kill -9) between enqueueing a point and asking for it leaves a WAITING trial. Optuna's ask()
    # takes the oldest waiting trial, so each later point was run one turn late and the last stayed queued for
    # ever: every rerun ended with it untried and the grid one short, without a word.
    s = spec({"optimizer.lr": [0.001, 0.01, 0.1]}, sampler="grid")
    study_of(s, tmp_path).enqueue_trial(grid_points(s)[0])
    result = run_sweep(s, out=tmp_path, quiet=True)
    assert sorted(c.optimizer.lr for c in fake_train) == [0.001, 0.01, 0.1]
    assert sorted(r.state for r in result.rows) == ["COMPLETE"] * 3
    # the last point queued, the others done: it was taken for tried, and the grid ended one short
    fake_train.clear()
    run_sweep(spec({"optimizer.lr": [0.001, 0.01, 0.1]}, sampler="grid", trials=2), out=tmp_path / "b", quiet=True)
    study_of(s, tmp_path / "b").enqueue_trial(grid_points(s)[2])
    result = run_sweep(s, out=tmp_path / "b", quiet=True)
    assert [c.optimizer.lr for c in fake_train] == [0.001, 0.01, 0.1]
    assert [r.state for r in result.rows] == ["COMPLETE"] * 3


def test_ctrl_c_right_after_a_trial_is_asked_for_does_not_leave_it_running(fake_train, tmp_path, monkeypatch):
    # Before its host and pid were stored, no rerun could tell the trial's process had gone: RUNNING for ever, it
    # counted towards the total, and the grid ended one point short on every rerun.
    from mnistlab.sweep.runner import SweepInterrupted

    real = optuna.trial.Trial.set_user_attr

    def interrupted(self, key, value):
        if key == "host":
            raise KeyboardInterrupt
        real(self, key, value)

    s = spec({"optimizer.lr": [0.001, 0.01]}, sampler="grid")
    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", interrupted)
    with pytest.raises(SweepInterrupted):
        run_sweep(s, out=tmp_path, quiet=True)
    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", real)
    result = run_sweep(s, out=tmp_path, quiet=True)
    assert sorted(c.optimizer.lr for c in fake_train) == [0.001, 0.01]
    assert sorted(r.state for r in result.rows) == ["COMPLETE", "COMPLETE", "FAIL"]


def test_a_different_sweep_in_the_same_study_is_refused(fake_train, tmp_path):
    run_sweep(spec({"optimizer.lr": [0.001, 0.01]}, sampler="grid"), out=tmp_path, quiet=True)
    with pytest.raises(ConfigError, match=r"was started by a different sweep \(it differs in: params\)"):
        run_sweep(spec({"optimizer.lr": [0.001, 0.02]}, sampler="grid"), out=tmp_path, quiet=True)
    with pytest.raises(ConfigError, match=r"differs in: base"):
        run_sweep(spec({"optimizer.lr": [0.001, 0.01]}, epochs=3, sampler="grid"), out=tmp_path, quiet=True)


def test_a_rerun_that_only_turns_the_reports_off_or_the_progress_bar_is_the_same_sweep(fake_train, tmp_path):
    params = {"optimizer.lr": [0.001, 0.01, 0.1]}
    run_sweep(spec(params, sampler="grid", trials=1), out=tmp_path, quiet=True)
    quieter = {"train": {"epochs": 2, "report": False, "progress": False}}
    run_sweep(spec(params, base=quieter, sampler="grid", trials=2), out=tmp_path, quiet=True)
    # On another machine, with its own thread count (--set train.threads=1): it was "a different sweep".
    other_machine = {"train": {"epochs": 2, "threads": 1}}
    run_sweep(spec(params, base=other_machine, sampler="grid"), out=tmp_path, quiet=True)
    assert [(c.optimizer.lr, c.train.report, c.train.threads) for c in fake_train] == [
        (0.001, True, None), (0.01, False, None), (0.1, True, 1)]


def test_a_study_that_stored_its_thread_count_continues_with_another(fake_train, tmp_path):
    # Studies begun before train.threads was left out of the fingerprint hold it; a rerun with another count
    # (or none) continues them.
    params = {"optimizer.lr": [0.001, 0.01, 0.1]}
    run_sweep(spec(params, sampler="grid", trials=1), out=tmp_path, quiet=True)
    study = study_of(spec(params, sampler="grid"), tmp_path)
    older = study.user_attrs["sweep"]
    older["base"]["train"]["threads"] = 2
    study.set_user_attr("sweep", older)
    run_sweep(spec(params, base={"train": {"epochs": 2, "threads": 1}}, sampler="grid"), out=tmp_path, quiet=True)
    assert [c.optimizer.lr for c in fake_train] == [0.001, 0.01, 0.1]


def test_a_study_begun_before_a_config_key_existed_continues_while_the_key_keeps_its_default(fake_train, tmp_path):
    # A study's fingerprint holds the whole base config: one begun by an older mnistlab lacks the keys added
    # since (train.max_steps, train.class_weights), and every rerun was refused as "a different sweep".
    params = {"optimizer.lr": [0.001, 0.01, 0.1]}
    run_sweep(spec(params, sampler="grid", trials=1), out=tmp_path, quiet=True)
    study = study_of(spec(params, sampler="grid"), tmp_path)
    older = study.user_attrs["sweep"]
    for key in ("max_steps", "class_weights"):
        del older["base"]["train"][key]
    study.set_user_attr("sweep", older)
    with pytest.raises(ConfigError, match=r"differs in: base"):  # given a value, the key changes what trains
        run_sweep(spec(params, base={"train": {"epochs": 2, "max_steps": 5}}, sampler="grid"), out=tmp_path,
                  quiet=True)
    run_sweep(spec(params, sampler="grid"), out=tmp_path, quiet=True)
    assert [c.optimizer.lr for c in fake_train] == [0.001, 0.01, 0.1]


def test_a_storage_that_cannot_be_opened_leaves_no_folder(fake_train, tmp_path):
    with pytest.raises(ConfigError, match="cannot open the sweep storage foo://bar"):
        run_sweep(spec({"optimizer.lr": [0.001]}, storage="foo://bar"), out=tmp_path / "new" / "sweep", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_a_storage_folder_that_cannot_be_written_is_one_clear_error_at_once(fake_train, tmp_path):
    # /proc takes no new files; filelock took the failure for a held lock and waited its whole 120 s
    t0 = time.monotonic()
    with pytest.raises(MnistlabError, match="cannot write the sweep storage's folder /proc"):
        run_sweep(spec({"optimizer.lr": [0.001]}, storage="sqlite:////proc/study.db"), out=tmp_path / "new" / "sweep",
                  quiet=True)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "new").exists()


def test_median_pruner_prunes_a_trial_below_the_median(fake_train, tmp_path):
    # Trials 0 and 1 (lr near 0.01) reach 0.3 after epoch 1 of 3; lr 1e-5 reaches 0.075: below their median.
    s = spec({"optimizer.lr": [0.01, 0.011, 1e-5]}, epochs=3, sampler="grid", pruner="median")
    result = run_sweep(s, out=tmp_path, quiet=True)
    rows = {r.number: r for r in result.rows}
    assert [rows[i].state for i in range(3)] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert rows[2].epochs == 1 and "pruned by the sweep at epoch 1" in rows[2].note
    assert rows[0].epochs == rows[1].epochs == 3
    assert [r.number for r in result.rows][-1] == 2  # pruned trials come after the finished ones
    study = study_of(s, tmp_path)
    assert study.trials[2].intermediate_values == {1: pytest.approx(fake_accuracy(fake_train[2], 1))}


@pytest.mark.parametrize("params, most", [
    ({"optimizer.lr": [0.001, 0.01]}, 2),
    ({"train.epochs": [4, 20, 9]}, 20),
    ({"train.epochs": {"type": "int", "low": 2, "high": 12, "step": 2}}, 12),
])
def test_hyperband_plans_its_brackets_up_to_the_most_epochs_a_trial_can_train(params, most):
    s = spec(params, epochs=2, pruner="hyperband")
    assert most_epochs(s) == most
    # Its brackets come from this maximum: 20 epochs give three (rungs from epoch 1, 3, 9); the base's 2 gave one.
    assert make_pruner(s)._max_resource == most


def test_early_stopping_pruner_prunes_what_our_rule_stops(fake_train, tmp_path):
    # The project's own EarlyStopping with a baseline: a trial not above 0.35 val_accuracy by epoch 2 stops.
    # lr 1e-4 gives 0.15 at epoch 2 and improves by less than min_delta at epoch 3; lr 0.01 gives 0.45, 0.675, 0.9.
    base = {"early_stopping": {"criterion": "patience", "monitor": "val_accuracy", "baseline": 0.35, "patience": 1,
                               "min_delta": 0.1, "start_epoch": 2}}
    s = spec({"optimizer.lr": [0.01, 1e-4]}, epochs=4, base=base, sampler="grid", pruner="early_stopping")
    rows = {r.number: r for r in run_sweep(s, out=tmp_path, quiet=True).rows}
    assert (rows[0].state, rows[0].epochs) == ("COMPLETE", 4)
    assert (rows[1].state, rows[1].epochs) == ("PRUNED", 3)
    assert rows[1].note.startswith("early stopping: val_accuracy did not beat the baseline 0.35")
    assert not (tmp_path / "best.toml").read_text().count("lr = 0.0001")


def test_early_stopping_pruner_never_prunes_a_trial_stopped_at_its_last_epoch(fake_train, tmp_path):
    # As for Optuna's pruners (ReportToTrial): a trial that trained every planned epoch is complete. With 3 epochs,
    # lr 1e-4 (0.1, 0.2, 0.3) misses the baseline and the rule stops it at epoch 3, which was its last anyway.
    base = {"early_stopping": {"criterion": "patience", "monitor": "val_accuracy", "baseline": 0.35, "patience": 1,
                               "min_delta": 0.1, "start_epoch": 2}}
    s = spec({"optimizer.lr": [0.01, 1e-4]}, epochs=3, base=base, sampler="grid", pruner="early_stopping")
    rows = {r.number: r for r in run_sweep(s, out=tmp_path, quiet=True).rows}
    assert rows[1].note.startswith("early stopping")  # the rule did stop it, at its last epoch
    assert (rows[1].state, rows[1].epochs, rows[1].value) == ("COMPLETE", 3, pytest.approx(0.3))


def test_a_trial_our_rule_stopped_is_pruned_even_when_ctrl_c_comes_during_its_test(fake_train, tmp_path, monkeypatch):
    # Kept after training (see the test below), it was recorded COMPLETE: a trial the early_stopping pruner
    # prunes could become the best, and best.toml name it.
    import mnistlab.training.run as run_module
    from mnistlab.sweep.runner import SweepInterrupted

    fake = run_module.train

    def train(cfg, *, out, callbacks=(), **kwargs):
        fake(cfg, out=out, callbacks=callbacks, **kwargs)
        raise KeyboardInterrupt  # during the test, after training

    monkeypatch.setattr(run_module, "train", train)
    base = {"early_stopping": {"criterion": "patience", "monitor": "val_accuracy", "baseline": 0.35, "patience": 1,
                               "min_delta": 0.1, "start_epoch": 2}}
    s = spec({"optimizer.lr": [1e-4, 0.01]}, epochs=4, base=base, sampler="grid", pruner="early_stopping")
    with pytest.raises(SweepInterrupted, match="had finished training and is kept"):
        run_sweep(s, out=tmp_path, quiet=True)
    (trial,) = study_of(s, tmp_path).get_trials()
    assert trial.state == S.PRUNED and trial.user_attrs["epochs"] == 3


def test_a_diverged_trial_counts_as_pruned_and_is_not_drawn_again(fake_train, tmp_path):
    result = run_sweep(spec({"optimizer.lr": [0.01, 5.0]}, sampler="grid"), out=tmp_path, quiet=True)
    rows = {r.params["optimizer.lr"]: r for r in result.rows}
    assert (rows[5.0].state, rows[5.0].value, rows[5.0].note) == ("PRUNED", None, "non-finite loss")
    assert rows[0.01].state == "COMPLETE" and len(fake_train) == 2


def test_report_to_trial_reports_each_epoch_and_stops_through_the_handle():
    class Trial:
        def __init__(self, prune_at):
            self.reported, self.prune_at = [], prune_at

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) == self.prune_at

    trial, handle = Trial(prune_at=2), FakeHandle()
    cb = ReportToTrial(trial, "val_loss")
    for epoch in (1, 2, 3):
        cb.on_epoch_end(epoch, {"val_loss": 1.0 / epoch, "val_accuracy": 0.5}, handle)
    assert trial.reported == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert cb.pruned_at == 2 and handle.stop_reason == "pruned by the sweep at epoch 2 (val_loss 0.5)"
    assert handle.stopped_by == "callback"  # not "early_stopping": a pruned trial is told apart from our rule
    # after the run's last epoch there is nothing left to save: the trial is complete, whatever the pruner says
    # (the trainer's planned_epochs: train.epochs, or the epoch where train.max_steps end the run; pruned there, a
    # trial that had trained all it was to train could not become the best)
    trial, handle = Trial(prune_at=3), FakeHandle(planned_epochs=3)
    cb = ReportToTrial(trial, "val_loss")
    for epoch in (1, 2, 3):
        cb.on_epoch_end(epoch, {"val_loss": 1.0 / epoch, "val_accuracy": 0.5}, handle)
    assert cb.pruned_at is None and handle.stop_reason is None
    cb, handle = ReportToTrial(Trial(prune_at=1), "val_loss"), FakeHandle(planned_epochs=2)
    cb.on_epoch_end(1, {"val_loss": 1.0, "val_accuracy": 0.5}, handle)
    assert cb.pruned_at == 1
    # Stopped at this epoch by a callback before this one (train.max_minutes' time limit): the run's reason is the
    # time limit's, and the trial, complete, is not marked pruned as well (it was, beside that summary.json).
    cb, handle = ReportToTrial(Trial(prune_at=1), "val_loss"), FakeHandle(planned_epochs=3)
    handle.request_stop("time limit")
    cb.on_epoch_end(1, {"val_loss": 1.0, "val_accuracy": 0.5}, handle)
    assert cb.pruned_at is None and handle.stop_reason == "time limit"


def test_a_trial_left_running_by_a_dead_process_is_failed_and_rerun(fake_train, tmp_path):
    s = spec({"optimizer.lr": [0.001, 0.01]}, sampler="grid")
    study = study_of(s, tmp_path)
    study.enqueue_trial(grid_points(s)[0])
    ghost = study.ask()  # as if a process had started it and been killed with -9
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    ghost.set_user_attr("host", socket.gethostname())
    ghost.set_user_attr("pid", int(dead.stdout))
    ghost.suggest_categorical("optimizer.lr", [0.001, 0.01])
    result = run_sweep(s, out=tmp_path, quiet=True)
    states = {r.number: r.state for r in result.rows}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}
    assert sorted(c.optimizer.lr for c in fake_train) == [0.001, 0.01]


def test_config_errors_of_a_combination_are_refused_before_any_trial():
    # nesterov needs momentum > 0: each value is valid on the base, one combination is not. It failed its trial.
    with pytest.raises(ConfigError, match=r"with optimizer.momentum = 0.0, optimizer.nesterov = True: "
                                          r"optimizer.nesterov needs optimizer.momentum > 0"):
        spec({"optimizer.momentum": [0.0, 0.9], "optimizer.nesterov": [False, True]},
             base={"optimizer": {"name": "sgd"}}, sampler="grid")


def fail_trials_at(monkeypatch, lr: float, message: str) -> None:
    """Trials at learning rate ``lr`` raise a RuntimeError(message) as they train (fake_train trains the others)."""
    import mnistlab.training.run as run_module

    fake = run_module.train

    def train(cfg, **kwargs):
        if cfg.optimizer.lr == lr:
            raise RuntimeError(message)
        return fake(cfg, **kwargs)

    monkeypatch.setattr(run_module, "train", train)


def test_any_error_in_a_trial_fails_that_trial_and_the_sweep_goes_on(fake_train, tmp_path, monkeypatch):
    # A KeyError (or a torch RuntimeError) went up as a traceback and left the trial RUNNING in the study.
    fail_trials_at(monkeypatch, 0.01, "DefaultCPUAllocator: can't allocate memory")
    s = spec({"optimizer.lr": [0.001, 0.01, 0.1]}, sampler="grid")
    result = run_sweep(s, out=tmp_path, quiet=True)
    rows = {r.params["optimizer.lr"]: r for r in result.rows}
    assert rows[0.01].state == "FAIL" and rows[0.01].note == "RuntimeError: DefaultCPUAllocator: can't allocate memory"
    assert rows[0.01].run_dir is None  # it failed before its folder was made: none is named
    assert [rows[lr].state for lr in (0.001, 0.1)] == ["COMPLETE", "COMPLETE"]
    assert not study_of(s, tmp_path).get_trials(states=(S.RUNNING,))


def test_ctrl_c_after_a_trial_trained_and_tested_keeps_it(fake_train, tmp_path, monkeypatch):
    import json

    import mnistlab.training.run as run_module
    from mnistlab.sweep.runner import SweepInterrupted

    fake = run_module.train

    def train(cfg, *, out, **kwargs):
        fake(cfg, out=out, **kwargs)
        (out / "summary.json").write_text(json.dumps({"test_accuracy": 0.9}))
        raise KeyboardInterrupt  # during the report, after the test: outside the trainer's signal guard

    monkeypatch.setattr(run_module, "train", train)
    s = spec({"optimizer.lr": [0.01, 0.1]}, sampler="grid")
    with pytest.raises(SweepInterrupted, match="trial 0 had finished training and is kept"):
        run_sweep(s, out=tmp_path, quiet=True)
    (trial,) = study_of(s, tmp_path).get_trials()
    assert trial.state == S.COMPLETE and trial.value == pytest.approx(fake_accuracy(fake_train[0], 2))


def test_a_sweep_folder_with_url_characters_keeps_its_database(fake_train, tmp_path):
    # "?" began SQLAlchemy's options and "%41" was decoded: the database went to tmp_path / "q", outside the folder.
    out = tmp_path / "q?x%41"
    import sqlalchemy.engine

    if sqlalchemy.engine.make_url("sqlite:////q%3F").database != "/q?":  # before 2.1: no URL names that folder
        with pytest.raises(MnistlabError, match=r"q\?x%41 has characters \(such as \? or %\)"):
            run_sweep(spec({"optimizer.lr": [0.01]}, sampler="grid"), out=out, quiet=True)
        return
    run_sweep(spec({"optimizer.lr": [0.01]}, sampler="grid"), out=out, quiet=True)
    assert (out / "study.db").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["q?x%41"]


def test_a_missing_optuna_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from mnistlab.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(MnistlabError, match=r"needs Optuna, which is not installed: pip install 'mnistlab\[tune\]'"):
        require_optuna()
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\n[sweep.params]\n"optimizer.lr" = [0.001, 0.01]\n')
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "mnistlab sweep: error:" in err and "pip install 'mnistlab[tune]'" in err and "Traceback" not in err


def test_a_second_study_in_a_folder_with_trial_folders_is_refused(fake_train, tmp_path):
    run_sweep(spec({"optimizer.lr": [0.001, 0.01]}, sampler="grid"), out=tmp_path, quiet=True)
    with pytest.raises(ConfigError, match=r"holds the trial folders of another sweep .* choose another --out"):
        run_sweep(spec({"optimizer.lr": [0.001, 0.01]}, sampler="grid", study_name="other"), out=tmp_path, quiet=True)
    run_sweep(spec({"optimizer.lr": [0.001, 0.01]}, sampler="grid"), out=tmp_path, quiet=True)  # its own: continues


def test_the_continue_command_repeats_the_given_arguments_with_the_folder():
    from mnistlab.sweep.runner import _continue_command
    from pathlib import Path

    s = spec({"optimizer.lr": [0.001]})
    given = ["sweep", "my sweep.toml", "--data-dir", "/d", "--set", "train.epochs=1", "--trials", "4"]
    assert _continue_command(s, Path("sweeps/x"), given) == (
        "mnistlab sweep 'my sweep.toml' --data-dir /d --set train.epochs=1 --trials 4 --out sweeps/x")
    assert _continue_command(s, Path("o"), ["sweep", "f.toml", "--out=o"]) == "mnistlab sweep f.toml --out=o"


def test_an_unknown_model_fails_when_the_file_loads():
    with pytest.raises(ConfigError, match=r'sweep.params."model.name": unknown model \'resnet99\''):
        spec({"model.name": ["cnn", "resnet99"]})
    with pytest.raises(ConfigError, match="the base config: unknown model 'nope'"):
        spec({"optimizer.lr": [0.1]}, base={"model": {"name": "nope"}})


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interruption_during_the_test_keeps_the_trained_trial_with_its_value(fake_train, tmp_path, monkeypatch,
                                                                                signal_name):
    # Before the test had written summary.json the trained trial was marked failed; kept after it, it had no
    # objective in results.csv, so best.toml could name a worse trial. SIGTERM there killed the sweep silently.
    import signal

    import mnistlab.training.run as run_module
    from mnistlab.errors import Signalled
    from mnistlab.sweep.results import collect
    from mnistlab.sweep.runner import SweepInterrupted

    fake = run_module.train

    def train(cfg, *, out, callbacks=(), **kwargs):
        fake(cfg, out=out, callbacks=callbacks, **kwargs)  # ends with on_train_end, as the trainer: the test is next
        raise KeyboardInterrupt if signal_name == "SIGINT" else Signalled(signal.SIGTERM)

    monkeypatch.setattr(run_module, "train", train)
    s = spec({"optimizer.lr": [0.01, 0.1]}, sampler="grid")
    with pytest.raises(SweepInterrupted, match="trial 0 had finished training and is kept") as stopped:
        run_sweep(s, out=tmp_path, quiet=True)
    assert stopped.value.signum == getattr(signal, signal_name)
    (trial,) = study_of(s, tmp_path).get_trials()
    expected = fake_accuracy(fake_train[0], 2)
    assert trial.state == S.COMPLETE and trial.value == pytest.approx(expected)
    (row,) = collect(study_of(s, tmp_path), s)
    assert row.value == pytest.approx(expected) and row.epochs == 2  # what results.csv and best.toml read


def test_a_base_config_without_a_validation_split_is_refused_when_the_file_loads():
    with pytest.raises(ConfigError, match="data.val_size must be at least 1"):  # every trial failed on it
        spec({"optimizer.lr": [0.01]}, base={"data": {"val_size": 0}})


def test_an_unquoted_dotted_key_says_to_quote_it():
    with pytest.raises(ConfigError, match=r'a dotted key needs quotes in TOML, as in "optimizer.lr" = '):
        spec({"optimizer": {"lr": [0.001, 0.01]}})  # what TOML makes of optimizer.lr = [...] unquoted


def test_train_warnings_in_a_sweep_are_the_sweeps_and_once(capsys):
    import mnistlab.training.run as run_module

    with run_module.warnings_as("sweep"):
        run_module._warn("momentum is not read by adam")
        run_module._warn("momentum is not read by adam")  # the next trial's train()
    run_module._warn("after")
    assert capsys.readouterr().err == ("mnistlab sweep: warning: momentum is not read by adam\n"
                                       "mnistlab train: warning: after\n")


def test_a_plot_that_cannot_be_drawn_leaves_the_table(fake_train, tmp_path, monkeypatch, capsys):
    # A Ctrl-C while matplotlib was first imported left it half-loaded: drawing objective.png then raised, and
    # the interrupted sweep ended in a traceback without results.csv or best.toml.
    import mnistlab.sweep.results as results

    def broken(rows, spec):
        raise KeyError("Rectangle:kwdoc")

    monkeypatch.setattr(results, "objective_png", broken)
    result = run_sweep(spec({"optimizer.lr": [0.01]}, sampler="grid"), out=tmp_path, quiet=True)
    assert (tmp_path / "results.csv").exists() and (tmp_path / "best.toml").exists()
    assert not (tmp_path / "objective.png").exists() and "plot" not in result.files
    assert "mnistlab sweep: warning: objective.png was not drawn (KeyError" in capsys.readouterr().err


def test_a_training_runs_folder_is_not_a_sweep_folder(fake_train, tmp_path):
    # Accepted: study.db, trial folders, results.csv and best.toml were mixed in with the run's best.ckpt.
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(MnistlabError, match="is a training run's folder"):
        run_sweep(spec({"optimizer.lr": [0.01]}, sampler="grid"), out=tmp_path, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# A finite space: 2 optimizers x 2 batch sizes x 3 epoch counts, 12 points.
FINITE = {"optimizer.name": ["adam", "sgd"], "train.batch_size": [64, 128],
          "train.epochs": {"type": "int", "low": 1, "high": 3}}


def trained(fake_train):
    return [(c.optimizer.name, c.train.batch_size, c.train.epochs) for c in fake_train]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_finite_space_never_trains_the_same_values_twice(fake_train, tmp_path, sampler):
    # Each trial was drawn on its own: 12 trials trained some configs two or three times, others never.
    # 12 trials also take TPE past its 10 random start-up trials, to its own proposals.
    result = run_sweep(spec(FINITE, sampler=sampler, trials=12), out=tmp_path, quiet=True)
    assert sorted(trained(fake_train)) == sorted(
        (name, bs, epochs) for name in ("adam", "sgd") for bs in (64, 128) for epochs in (1, 2, 3))
    assert [r.state for r in result.rows] == ["COMPLETE"] * 12
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 12


def test_more_trials_than_combinations_end_after_each_has_run_once(fake_train, tmp_path, capsys):
    params = {"optimizer.name": ["adam", "sgd"], "train.batch_size": [64, 128]}
    result = run_sweep(spec(params, sampler="random", trials=10), out=tmp_path, quiet=True)
    assert sorted(trained(fake_train)) == [("adam", 64, 2), ("adam", 128, 2), ("sgd", 64, 2), ("sgd", 128, 2)]
    assert len(result.rows) == 4 and len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 4
    assert ("mnistlab sweep: warning: 10 trials asked for, but the params take only 4 distinct combinations "
            "(2 optimizer.name x 2 train.batch_size); no trial repeats another's values, so the sweep ends after 4; "
            'sampler = "grid" runs each of them in turn') in capsys.readouterr().err
    run_sweep(spec(params, sampler="random", trials=10), out=tmp_path, quiet=True)  # the same command again
    assert len(fake_train) == 4


def test_a_rerun_and_another_workers_running_trial_are_not_repeated(fake_train, tmp_path):
    import os
    import socket

    from mnistlab.sweep.runner import suggest

    params = {"optimizer.name": ["adam", "sgd"], "train.batch_size": [32, 64, 128]}
    run_sweep(spec(params, sampler="tpe", trials=2), out=tmp_path, quiet=True)
    # A worker's trial, still training: its values are in the study, as the worker drew them under the lock.
    s = spec(params, sampler="tpe", trials=6)
    other = open_study(s, storage_url(s, tmp_path), worker=1).ask()
    other.set_user_attr("host", socket.gethostname())
    other.set_user_attr("pid", os.getpid())
    running = suggest(other, s)
    run_sweep(s, out=tmp_path, quiet=True)
    points = [(name, bs) for name, bs, _ in trained(fake_train)] + [tuple(running.values())]
    assert len(fake_train) == 5 and sorted(points) == sorted((n, b) for n in ("adam", "sgd") for b in (32, 64, 128))


def test_a_trials_values_are_in_the_study_before_the_lock_is_let_go(fake_train, tmp_path):
    # Drawn after the lock, as they were, two workers could both draw the one point left untried.
    from mnistlab.sweep.runner import work

    s = spec({"optimizer.name": ["adam", "sgd"], "train.batch_size": [64, 128]}, sampler="random", trials=4)
    study = study_of(s, tmp_path)
    released = []

    class Lock:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            released.extend(t.params for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)))

    assert work(s, study, tmp_path, Lock(), echo=lambda line: None) == 4
    assert len(released) == 4 and all(set(p) == {"optimizer.name", "train.batch_size"} for p in released)


def test_a_space_whose_last_points_failed_ends_without_retrying_them(fake_train, tmp_path, monkeypatch):
    # The failing point was drawn again and again (its error would come back), and the good one twice.
    fail_trials_at(monkeypatch, 0.01, "out of memory")
    result = run_sweep(spec({"optimizer.lr": [0.001, 0.01]}, sampler="random", trials=2), out=tmp_path, quiet=True)
    assert [c.optimizer.lr for c in fake_train] == [0.001]
    assert sorted((r.state, r.params["optimizer.lr"]) for r in result.rows) == [("COMPLETE", 0.001), ("FAIL", 0.01)]


def test_a_stepped_float_range_is_finite_despite_float_error(fake_train, tmp_path):
    # Optuna's third value of 0.1, 0.2, ... is 0.30000000000000004: compared by position, it is not a new point.
    result = run_sweep(spec({"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.005, "step": 0.001}},
                            sampler="random", trials=5), out=tmp_path, quiet=True)
    assert sorted(round(c.optimizer.lr, 9) for c in fake_train) == [0.001, 0.002, 0.003, 0.004, 0.005]
    assert len(result.rows) == 5


def _sqlalchemy_2_0_make_url(url):
    """make_url's database as SQLAlchemy 2.0 and 1.4 read it: no decoding, the options after "?"."""
    from types import SimpleNamespace

    return SimpleNamespace(database=url.split("///", 1)[1].split("?", 1)[0])


def test_a_sweep_folder_with_a_space_keeps_its_database_under_sqlalchemy_2_0(monkeypatch, tmp_path):
    # SQLAlchemy 2.0 (pip's pick on Python 3.10) decodes nothing: the quoted "my%20sweeps" was another folder,
    # one that did not exist, and every sweep in a folder with a space failed.
    import sqlalchemy.engine

    from mnistlab.sweep.runner import storage_url

    s = spec({"optimizer.lr": [0.01]}, sampler="grid")
    out = tmp_path / "my sweeps"
    assert sqlalchemy.engine.make_url(storage_url(s, out)).database == str(out / "study.db")  # this SQLAlchemy
    monkeypatch.setattr(sqlalchemy.engine, "make_url", _sqlalchemy_2_0_make_url)
    assert storage_url(s, out) == f"sqlite:///{out / 'study.db'}"
    with pytest.raises(MnistlabError, match=r"the sweep folder .*q\?x has characters \(such as \? or %\)"):
        storage_url(s, tmp_path / "q?x")
