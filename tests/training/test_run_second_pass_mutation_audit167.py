"""Audit 167: tests that kill the mutants of a second hand-made mutation audit of ``mnistlab/training/run.py``
that no other test caught: the run lock (a live run's lock stays its own, a lock another run took over is left
to it, a killed run's temporary files go with its stale lock, a run that fails or could not delete its lock
leaves the folder free, another user's live run holds its lock), the run folder (one run folder inside is enough
to refuse it; a default folder is removed again when the run fails), the test of best.ckpt rather than the final
weights (test-time augmentation included), and resumes (a fine-tuned run no longer needs its source checkpoint,
a damaged ema.ckpt is found before training, the messages for [ema] and a finished run). Each expected value is
worked out by hand from the docstrings, not read back from the code."""

from __future__ import annotations

import os

import pytest
import torch

from mnistlab import Config, apply_overrides, train
from mnistlab.callbacks import Callback
from mnistlab.data import load_data
from mnistlab.errors import RunDirError
from mnistlab.training import run as run_module
from mnistlab.training.checkpoint import load_model
from mnistlab.training.evaluate import evaluate


def tiny_cfg(mnist_root, *extra: str) -> Config:
    return apply_overrides(Config(), [f"data.dir={mnist_root}", "data.val_size=200", "data.train_limit=400",
                                      "data.test_limit=2000", "train.batch_size=100", "train.epochs=1",
                                      "train.progress=false", "train.threads=1", "tensorboard.enabled=false",
                                      "model.name=cnn", "model.width=0.25", "train.report=false", *extra])


# --- the run lock ------------------------------------------------------------------------------------------------

def test_a_live_run_s_lock_stays_its_own_after_the_process_grows(tmp_path):
    # The lock pairs the pid with the process's start time, which never changes; a field of /proc/PID/stat that
    # changes as the process allocates memory would make the live run's own lock look stale (a pid now owned by
    # a process started at another time), and a second run would take it over
    with run_module.RunLock(tmp_path):
        grown = bytearray(256 << 20)  # a new mapping: the process's virtual size changes
        with pytest.raises(RunDirError, match="in use by another mnistlab run in this process"):
            run_module.RunLock(tmp_path).__enter__()
        del grown
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / "run.lock").exists()


def test_a_lock_another_run_took_over_is_left_to_it(tmp_path):
    # The user deleted our lock (as the refusal tells them to when no run uses the folder) and another run took the
    # folder: ending ours must not delete the other run's lock, which would let a third run in beside it
    other = "1 12345"
    with run_module.RunLock(tmp_path):
        (tmp_path / "run.lock").write_text(other)
    assert (tmp_path / "run.lock").read_text() == other


# --- what the final test tests -------------------------------------------------------------------------------------

class ZeroWeightsInEpoch2(Callback):
    """Sets every weight to zero after each step of epoch 2: its validation is chance, so best.ckpt stays epoch 1's
    and the final weights are worse than it."""

    def on_batch_end(self, step, metrics, trainer):
        if trainer.epoch >= 1:  # epochs finished so far: 1 during epoch 2
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.zero_()


def test_the_final_test_and_tta_test_are_of_best_ckpt_not_the_final_weights(mnist_root, tmp_path):
    cfg = tiny_cfg(mnist_root, "train.epochs=2", "tta.enabled=true", "tta.shift=2", "schedule.name=constant")
    result = train(cfg, out=tmp_path / "run", quiet=True, callbacks=[ZeroWeightsInEpoch2()])
    s = result.summary
    history = result.fit.history
    assert history[0]["val_accuracy"] > history[1]["val_accuracy"]  # the setup: epoch 1 is the best
    assert (s["evaluated"], s["best_epoch"], s["epochs"]) == ("best.ckpt", 1, 2)
    assert s["best_val_accuracy"] == history[0]["val_accuracy"]
    best = load_model(tmp_path / "run" / "best.ckpt")
    data = load_data(cfg.data)
    assert s["test_accuracy"] == pytest.approx(evaluate(best, data.test).accuracy)
    tta = evaluate(best, data.test, tta_shift=2).accuracy
    assert s["tta_test_accuracy"] == pytest.approx(tta)
    assert tta != pytest.approx(evaluate(result.fit.model, data.test, tta_shift=2).accuracy)  # the final weights'


# --- resume ------------------------------------------------------------------------------------------------------

def test_a_resumed_fine_tuned_run_no_longer_needs_the_checkpoint_it_started_from(mnist_root, tmp_path):
    # The resumed run's weights are in its last.ckpt; finetune.init_from is read only when a run starts, so a
    # source run deleted (or moved) since does not stop the fine-tuned one from going on
    source = tmp_path / "source"
    train(tiny_cfg(mnist_root, "train.max_steps=1"), out=source, quiet=True)
    init = tmp_path / "init.ckpt"
    (source / "best.ckpt").rename(init)
    cfg = tiny_cfg(mnist_root, f"finetune.init_from={init}", "train.max_steps=1", "train.epochs=2")
    train(cfg, out=tmp_path / "tuned", quiet=True)
    init.unlink()
    resumed = train(apply_overrides(cfg, ["train.max_steps=2"]), resume=tmp_path / "tuned", quiet=True)
    assert resumed.summary["steps"] == 2


def test_taking_over_a_killed_run_s_lock_removes_that_run_s_temporary_files_only(tmp_path):
    # A run killed with -9 mid-write leaves .NAME.tmp-PID files (its pid) beside its stale lock, in the folder and
    # in plots/; the run that takes the folder over removes those, not the temporary files of other processes
    dead = 999999999  # no such process
    (tmp_path / "plots").mkdir()
    left = [tmp_path / f".summary.json.tmp-{dead}", tmp_path / "plots" / f".loss.png.tmp-{dead}"]
    others = [tmp_path / ".summary.json.tmp-1", tmp_path / "plots" / f".loss.png.tmp-{dead}0"]
    for path in left + others:
        path.write_text("half written")
    (tmp_path / "run.lock").write_text(str(dead))
    with run_module.RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
    assert [p.exists() for p in left] == [False, False]
    assert [p.exists() for p in others] == [True, True]


def test_a_lock_left_behind_by_an_ended_run_of_this_process_is_taken_over(tmp_path, monkeypatch):
    # A folder made read-only at the end of a run: its lock could not be deleted and names this process. The run
    # has ended all the same, so the next run in this process (a notebook's next cell) takes the lock over
    from pathlib import Path

    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name == "run.lock":
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with run_module.RunLock(tmp_path):
        pass
    monkeypatch.undo()
    assert (tmp_path / "run.lock").exists()
    with run_module.RunLock(tmp_path):
        pass
    assert not (tmp_path / "run.lock").exists()


def test_a_lock_of_a_process_this_user_may_not_signal_is_held(tmp_path, monkeypatch):
    # Another user's live run: os.kill(pid, 0) raises PermissionError, and the process exists
    (tmp_path / "run.lock").write_text("4242")  # no start time, as on a system without /proc

    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    with pytest.raises(RunDirError, match=r"in use by another mnistlab run \(pid 4242\)"):
        run_module.RunLock(tmp_path).__enter__()
    assert (tmp_path / "run.lock").read_text() == "4242"


class FailAtStep1(Callback):
    def on_batch_end(self, step, metrics, trainer):
        raise ValueError("a callback's own bug")


def test_a_run_that_fails_releases_its_lock(mnist_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="a callback's own bug"):
        train(tiny_cfg(mnist_root), out=out, quiet=True, callbacks=[FailAtStep1()])
    assert not (out / "run.lock").exists()
    with run_module.RunLock(out):  # and this process holds it no longer
        pass


# --- the run folder ------------------------------------------------------------------------------------------------

def test_a_folder_holding_a_single_run_folder_is_refused(tmp_path):
    # `--out runs` after the first run: one run folder in it is enough for its files to lie beside that run
    (tmp_path / "runs" / "first").mkdir(parents=True)
    (tmp_path / "runs" / "first" / "summary.json").write_text("{}")
    with pytest.raises(RunDirError, match=r"runs holds run folders \(first\): "):
        run_module.prepare_run_dir(tmp_path / "runs", resume=False)


def test_the_trained_model_is_named_by_its_data_as_a_loaded_one_is(mnist_root, tmp_path):
    # result.fit.model predicts as the checkpoint's model does: with the dataset's class names and dataset name
    result = train(tiny_cfg(mnist_root, "train.max_steps=1"), out=tmp_path / "run", quiet=True)
    loaded = load_model(tmp_path / "run" / "best.ckpt")
    assert (result.fit.model.dataset, list(result.fit.model.classes)) == ("mnist", [str(i) for i in range(10)])
    assert (loaded.dataset, list(loaded.classes)) == ("mnist", [str(i) for i in range(10)])


def test_a_damaged_ema_ckpt_is_found_before_a_resumed_run_with_ema_trains(mnist_root, tmp_path):
    # With [ema] on, the resumed run tests ema.ckpt at its end: damaged, it must fail before the new steps train
    # and rewrite last.ckpt, not after
    from mnistlab.errors import CheckpointError

    out = tmp_path / "run"
    cfg = tiny_cfg(mnist_root, "ema.enabled=true", "train.max_steps=1")
    train(cfg, out=out, quiet=True)
    data = (out / "ema.ckpt").read_bytes()
    (out / "ema.ckpt").write_bytes(data[: len(data) // 2])
    last = (out / "last.ckpt").read_bytes()
    with pytest.raises(CheckpointError, match="ema.ckpt.*put back an intact copy, or delete it .*no EMA test is "
                                              "reported"):
        train(apply_overrides(cfg, ["train.max_steps=2"]), resume=out, quiet=True)
    assert (out / "last.ckpt").read_bytes() == last


def test_a_run_without_out_that_fails_before_writing_leaves_no_empty_folder(tmp_path, monkeypatch):
    # runs/<date>-<time>-<model> is made before the data is read: a run that then fails (no data here, and no
    # download allowed) must not leave it behind, empty, for compare and the user to find
    from mnistlab.errors import MnistlabError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "empty").mkdir()
    cfg = tiny_cfg(tmp_path / "empty", "data.download=false")
    with pytest.raises(MnistlabError):
        train(cfg, quiet=True)
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_run_resumed_with_ema_still_on_does_not_warn_that_it_was_turned_off(mnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_cfg(mnist_root, "ema.enabled=true", "train.max_steps=1")
    train(cfg, out=out, quiet=True)
    capsys.readouterr()
    resumed = train(apply_overrides(cfg, ["train.max_steps=2"]), resume=out, quiet=True)
    assert "ema.enabled was true, now false" not in capsys.readouterr().err
    assert "ema_test_accuracy" in resumed.summary


def test_a_finished_run_resumed_as_it_was_says_it_is_only_tested(mnist_root, tmp_path, capsys):
    # Its one epoch is trained: the resumed run tests it again and says how to train on
    out = tmp_path / "run"
    cfg = tiny_cfg(mnist_root, "data.train_limit=200")
    train(cfg, out=out, quiet=True)
    capsys.readouterr()
    resumed = train(cfg, resume=out)
    assert ("the run has trained its 1 epoch: nothing is left to train, it is tested; to train on, resume with "
            "--epochs 2 or more") in capsys.readouterr().out
    assert resumed.summary["epochs"] == 1
