"""Tests from a mutation audit of sweep/runner.py (audit 148): each kills a mutant the other sweep tests let live.
Driven with ``fake_train`` (see conftest.py)."""

from __future__ import annotations

import signal

import pytest

from sweep_helpers import FakeHandle, import_optuna

optuna = import_optuna()  # skipped without Optuna, but a failure under CI=true (see sweep_helpers)

from mnistlab.errors import MnistlabError  # noqa: E402
from mnistlab.sweep import run_sweep, sweep_from_dict  # noqa: E402
from mnistlab.sweep.runner import SweepInterrupted, open_study, storage_url  # noqa: E402

S = optuna.trial.TrialState


def spec(params, epochs=2, **sweep):
    return sweep_from_dict({"train": {"epochs": epochs}, "sweep": {**sweep, "params": params}})


def states(s, out):
    study = open_study(s, storage_url(s, out))
    return [(t.params["optimizer.lr"], t.state.name) for t in study.get_trials()]


def _train_failing(monkeypatch, raise_at):
    """train() calls ``raise_at(cfg)`` first (which may raise), then trains as fake_train does."""
    import mnistlab.training.run as run

    fake = run.train

    def train(cfg, **kw):
        raise_at(cfg)
        return fake(cfg, **kw)

    monkeypatch.setattr(run, "train", train)


def test_a_trial_interrupted_while_it_trained_is_run_again_by_the_rerun(fake_train, tmp_path, monkeypatch):
    # Mutant r05: a failed trial with no error (Ctrl-C during its training) counted as tried, so the rerun ended
    # the grid without ever training that point.
    from mnistlab.training.fit import TrainingInterrupted

    interrupted = []

    def raise_at(cfg):
        if cfg.optimizer.lr == 0.01 and not interrupted:
            interrupted.append(cfg)
            raise TrainingInterrupted(signal.SIGINT, None)

    _train_failing(monkeypatch, raise_at)
    s = spec({"optimizer.lr": [0.001, 0.01]}, sampler="grid")
    with pytest.raises(SweepInterrupted, match="trial 1 was interrupted and is marked failed"):
        run_sweep(s, out=tmp_path, quiet=True)
    assert states(s, tmp_path) == [(0.001, "COMPLETE"), (0.01, "FAIL")]
    result = run_sweep(s, out=tmp_path, quiet=True)
    assert states(s, tmp_path) == [(0.001, "COMPLETE"), (0.01, "FAIL"), (0.01, "COMPLETE")]
    assert sorted(c.optimizer.lr for c in fake_train) == [0.001, 0.01]
    assert [r.state for r in result.rows].count("COMPLETE") == 2


def test_failures_in_a_row_start_again_from_zero_after_a_trial_that_trains(fake_train, tmp_path, monkeypatch):
    # Mutant r10: without the reset the sweep stopped at the third failure in all, though never three came in a row.
    def raise_at(cfg):
        if cfg.optimizer.lr in (0.003, 0.004, 0.005, 0.006):
            raise RuntimeError(f"boom at {cfg.optimizer.lr}")

    _train_failing(monkeypatch, raise_at)
    s = spec({"optimizer.lr": [0.003, 0.004, 0.001, 0.005, 0.006, 0.002]}, sampler="grid")
    run_sweep(s, out=tmp_path, quiet=True)
    assert states(s, tmp_path) == [(0.003, "FAIL"), (0.004, "FAIL"), (0.001, "COMPLETE"), (0.005, "FAIL"),
                                   (0.006, "FAIL"), (0.002, "COMPLETE")]
    # and three in a row do stop it, naming the last error
    def always(cfg):
        raise RuntimeError(f"boom at {cfg.optimizer.lr}")

    _train_failing(monkeypatch, always)
    s2 = spec({"optimizer.lr": [0.007, 0.008, 0.009, 0.01]}, sampler="grid")
    with pytest.raises(MnistlabError, match=r"^3 trials in a row failed; the last error: RuntimeError: boom at 0.009$"):
        run_sweep(s2, out=tmp_path / "again", quiet=True)


def test_sigterm_while_a_trial_trains_ends_the_sweep_as_sigterm_counting_pruned_trials_as_finished(
        fake_train, tmp_path, monkeypatch):
    # Mutant r43: the trainer's SIGTERM was reported as a Ctrl-C (exit 130, not 143). Mutant r54: the message
    # counted only complete trials as kept, though the pruned one (diverged) is kept and counts as well.
    from mnistlab.training.fit import TrainingInterrupted

    def raise_at(cfg):
        if cfg.optimizer.lr == 0.01:
            raise TrainingInterrupted(signal.SIGTERM, None)

    _train_failing(monkeypatch, raise_at)
    s = spec({"optimizer.lr": [5.0, 0.01, 0.001]}, sampler="grid")
    with pytest.raises(SweepInterrupted, match=r"trial 1 was interrupted and is marked failed\): 1 finished trial\(s\) "
                                               r"are kept") as stopped:
        run_sweep(s, out=tmp_path, quiet=True)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 143
    assert states(s, tmp_path) == [(5.0, "PRUNED"), (0.01, "FAIL")]
    assert (tmp_path / "results.csv").is_file()


def test_ctrl_c_after_an_interrupted_training_wrote_its_summary_fails_the_trial(fake_train, tmp_path, monkeypatch):
    # Mutant r58: any summary.json was taken for a tested run. An interrupted training writes one too (stopped_by
    # "interrupted", no test result); a second Ctrl-C then must not keep the half-trained trial as finished.
    import json

    import mnistlab.training.run as run

    def train(cfg, *, out, callbacks=(), **kw):
        out.mkdir(parents=True)
        for epoch in (1,):  # one of its two epochs, and no on_train_end: training did not end
            for cb in callbacks:
                cb.on_epoch_end(epoch, {"val_accuracy": 0.5}, FakeHandle(planned_epochs=2))
        (out / "summary.json").write_text(json.dumps({"stopped_by": "interrupted", "epochs": 1}))
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train", train)
    s = spec({"optimizer.lr": [0.01, 0.1]}, sampler="grid")
    with pytest.raises(SweepInterrupted, match="trial 0 was interrupted and is marked failed"):
        run_sweep(s, out=tmp_path, quiet=True)
    assert states(s, tmp_path) == [(0.01, "FAIL")]


def test_a_loss_objective_keeps_the_lowest_loss_over_the_epochs(fake_train, tmp_path):
    # Mutant r12: the best value was the highest whatever the direction, so a loss sweep kept each trial's worst epoch.
    from sweep_helpers import fake_accuracy

    s = spec({"optimizer.lr": [0.01, 0.001]}, epochs=3, sampler="grid", objective="val_loss")
    result = run_sweep(s, out=tmp_path, quiet=True)
    by_lr = {r.params["optimizer.lr"]: r.value for r in result.rows}
    # fake_train's loss is 1 - accuracy, which rises every epoch: the lowest loss is the last epoch's
    assert by_lr == {lr: pytest.approx(1 - fake_accuracy(c, 3)) for lr, c in zip((0.01, 0.001), fake_train)}
    assert result.rows[0].params["optimizer.lr"] == 0.01  # the lowest loss ranks first


def test_an_epoch_whose_objective_is_not_finite_is_passed_over():
    # r13: a NaN or infinite epoch among finite ones made the trial's value NaN, which Optuna marks failed.
    from mnistlab.sweep.runner import best_value

    nan, inf = float("nan"), float("inf")
    assert best_value([0.5, nan, 0.7, -inf], "maximize") == 0.7
    assert best_value([0.5, nan, 0.3, inf], "minimize") == 0.3
    assert best_value([nan, inf], "minimize") is None
