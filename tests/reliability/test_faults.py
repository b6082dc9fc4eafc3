"""Faults during a run: divergence, a full disk, an unusable run folder, two runs into one folder.

These run in this process (``mnistlab.cli.main`` or ``train``) on ``mini_root``;
the signal and kill -9 faults, which need a process to kill, are in test_interrupts.py.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import threading
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import mnistlab.training.run as run_module
from mnistlab.callbacks import Callback
from mnistlab.cli import main
from mnistlab.config import Config, apply_overrides
from mnistlab.errors import CheckpointError, RunDirError
from mnistlab.models import build_model
from mnistlab.training import train
from mnistlab.training.checkpoint import read_checkpoint
from reliability_helpers import finish, small_args, small_overrides, snapshot, start_cli, wait_for_lines


def cfg(root: Path, *extra: str) -> Config:
    return apply_overrides(Config(), small_overrides(root, *extra))


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


# ---------------------------------------------------------------------------
# non-finite loss


def test_a_huge_learning_rate_in_epoch_2_stops_at_once_and_keeps_epoch_1(mini_root, tmp_path, capsys):
    out = tmp_path / "run"
    # SGD at 0.05 for epoch 1, then the step schedule multiplies it by a million: epoch 2 diverges.
    rc = main(["train", *small_args(mini_root), "--epochs", "4", "--optimizer", "sgd", "--lr", "0.05",
               "--set", "schedule.name=step", "--set", "schedule.gamma=1e6", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0  # the run ends normally, with the reason printed and in summary.json
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "non_finite_loss"
    assert summary["stop_reason"].startswith("non-finite loss (nan) at epoch 2, step ")
    step = int(summary["stop_reason"].split("step ")[1].split()[0])
    assert 6 <= step <= 10  # epoch 2 is steps 6-10 (5 batches an epoch)
    assert summary["use_checkpoint"] == "best.ckpt" and summary["best_epoch"] == 1 and summary["epochs"] == 1
    assert f"stopped: {summary['stop_reason']}" in captured.out
    assert "training diverged: non-finite loss (nan) at epoch 2" in captured.err
    assert "use best.ckpt (epoch 1)" in captured.err
    # The last good state is kept: last.ckpt and best.ckpt both hold epoch 1, with finite weights.
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = read_checkpoint(out / name)
        assert ckpt["epoch"] == 1 and all_finite(ckpt["model"]), name
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1


def test_divergence_in_the_first_steps_says_no_checkpoint_is_usable(mini_root, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", *small_args(mini_root), "--epochs", "2", "--optimizer", "sgd", "--lr", "1e6",
               "--set", "schedule.name=constant", "--out", str(out)])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "non_finite_loss" and summary["stop_reason"].startswith("non-finite loss")
    assert "at epoch 1, step " in summary["stop_reason"]
    assert summary["use_checkpoint"] is None and summary["epochs"] == 0
    text = (out / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: a loss that is not a number is null
    assert "no epoch finished, so no checkpoint was written" in err
    assert not (out / "last.ckpt").exists() and not (out / "best.ckpt").exists()
    # The final weights give NaN outputs, whose argmax is class 0 for every image: that scored as a made-up
    # test accuracy (the share of zeros), with a confusion matrix and "misclassified" images to match.
    assert summary["evaluated"] == "final weights" and summary["test_accuracy"] is None
    assert set(summary["per_class_accuracy"].values()) == {None}
    assert re.search(r"no test accuracy: the outputs of final weights after step \d+ \(no epoch finished\) are "
                     r"not finite\n", captured.out), captured.out
    assert "tested with final weights after step " in captured.out and "epoch 0" not in captured.out
    assert "test accuracy 9" not in captured.out and not (out / "test_predictions.npz").exists()


class _BlowUpAtEndOfEpoch(Callback):
    """Makes the weights infinite after the last step of ``epoch``: the loss of every step stays finite."""

    def __init__(self, epoch: int, steps_per_epoch: int) -> None:
        self.step = epoch * steps_per_epoch

    def on_batch_end(self, step, metrics, trainer):
        if step == self.step:
            state = trainer.get_weights()
            trainer.set_weights({k: v * math.inf if v.is_floating_point() else v for k, v in state.items()})


def test_weights_that_diverge_on_the_last_step_of_an_epoch_are_not_saved(mini_root, tmp_path):
    out = tmp_path / "run"
    result = train(cfg(mini_root, "train.epochs=3"), out=out, quiet=True, callbacks=[_BlowUpAtEndOfEpoch(2, 5)])
    assert result.fit.stopped_by == "non_finite_loss"
    assert result.fit.stop_reason.startswith("non-finite validation loss (nan) at epoch 2, after step 10")
    last = read_checkpoint(out / "last.ckpt")
    assert last["epoch"] == 1 and all_finite(last["model"])
    assert result.summary["use_checkpoint"] == "best.ckpt"


# ---------------------------------------------------------------------------
# disk full, unwritable folder


def _fail_nth_write(monkeypatch, name: str, n: int) -> None:
    """torch.save writes half of the n-th checkpoint ``name``, then fails as a full disk does."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        if os.path.basename(getattr(f, "name", "")).startswith(f".{name}.tmp-"):
            calls.append(1)
            if len(calls) == n:
                f.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_at_a_checkpoint_write_is_a_clear_error_and_keeps_the_earlier_ones(
    mini_root, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    _fail_nth_write(monkeypatch, "last.ckpt", 2)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last.ckpt: No space left on device"):
        train(cfg(mini_root, "train.epochs=3"), out=out, quiet=True)
    assert read_checkpoint(out / "last.ckpt")["epoch"] == 1
    assert read_checkpoint(out / "best.ckpt")["epoch"] in (1, 2)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.name == "run.lock") == []
    monkeypatch.undo()  # space is free again: the run continues from epoch 1
    resumed = train(cfg(mini_root, "train.epochs=3"), resume=out, quiet=True)
    assert resumed.fit.epochs == 3


def test_a_disk_that_fills_inside_torchs_zip_writer_is_the_same_clear_error(mini_root, tmp_path, monkeypatch, capsys):
    # On a real full disk torch.save does not let the OSError out: its zip writer raises
    # RuntimeError("... unexpected pos ..."), which went up as a traceback.
    import io

    class FillsUp(io.RawIOBase):
        def __init__(self, f):
            self.f, self.written = f, 0

        def writable(self):
            return True

        def write(self, b):
            self.written += len(b)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        if ".tmp-" in os.path.basename(getattr(f, "name", "")):  # a checkpoint file, not a buffer in memory
            calls.append(1)
            if len(calls) == 2:
                f = FillsUp(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    rc = main(["train", *small_args(mini_root), "--epochs", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    # The second checkpoint written is one of epoch 1 that comes before its last.ckpt: nothing is there to resume
    # from. The message offered `--resume`, which then refused the folder, and so did a new run into it.
    assert not (out / "last.ckpt").exists()
    assert f"error: cannot write checkpoint {out}" in err and ": No space left on device; no epoch had been saved " \
        f"to resume from: once the folder can be written again (room on the disk, write access), delete {out} and " \
        "start the run anew" in err
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no half-written file left


def test_a_full_disk_at_metrics_csv_is_a_run_folder_error_naming_the_file(mini_root, tmp_path, monkeypatch):
    import mnistlab.callbacks.history as history

    out, real, calls = tmp_path / "run", history._atomic_write_text, []

    def write(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, text)

    monkeypatch.setattr(history, "_atomic_write_text", write)
    with pytest.raises(RunDirError) as err:
        train(cfg(mini_root, "train.epochs=3"), out=out, quiet=True)
    message = str(err.value)
    assert f"cannot write to run folder {out}: No space left on device ({out / 'metrics.csv'})" in message
    assert f"the checkpoints written before are intact: once the folder can be written again (room on the disk, " \
        f"write access), continue with `mnistlab train --resume {out}`" in message
    assert read_checkpoint(out / "last.ckpt")["epoch"] == 1


def test_too_little_free_space_is_refused_before_training(mini_root, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 10 * 2**20 - 2**19, 2**19))
    out = tmp_path / "run"
    rc = main(["train", *small_args(mini_root), "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"error: not enough free space for run folder {out}: 0.5 MiB free, but its checkpoints need about" in err
    assert not out.exists()  # nothing was written, and the folder this run created is gone again


def test_the_free_space_check_counts_no_more_top_k_files_than_epochs(tmp_path, monkeypatch):
    from mnistlab.training.run import check_free_space

    # save_top_k = 100000 in a 1-epoch run keeps one top-k file at most; it was refused for 100000 files' space
    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights: a checkpoint of about 13 MB with Adam's moments
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, 100 * 2**20))
    cfg = apply_overrides(Config(), ["checkpoint.save_top_k=100000", "train.epochs=1"])
    check_free_space(tmp_path, model, cfg)
    with pytest.raises(RunDirError, match="not enough free space"):
        check_free_space(tmp_path, model, apply_overrides(cfg, ["train.epochs=100"]))


def test_a_run_folder_that_cannot_be_created_fails_before_any_data_is_read(mini_root, tmp_path, monkeypatch, capsys):
    # chmod does not stop root, so the folder is put under a regular file: that fails for every user.
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "run"

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the run folder was checked")

    monkeypatch.setattr(run_module, "load_data", no_data)
    rc = main(["train", *small_args(mini_root), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"mnistlab train: error: cannot write to run folder {out}: Not a directory" in err
    with pytest.raises(RunDirError, match="cannot write to run folder"):
        train(cfg(mini_root), out=out, quiet=True)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_read_only_run_folder_fails_before_any_data_is_read(mini_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o500)
    if os.geteuid() == 0:
        # chmod does not bind root (CI runs as root): make the kernel's answer for a
        # non-root user happen here too, for writes into that folder only.
        real_write_bytes = Path.write_bytes

        def refusing_write_bytes(self, data):
            if self.parent == out:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_write_bytes(self, data)

        monkeypatch.setattr(Path, "write_bytes", refusing_write_bytes)
    monkeypatch.setattr(run_module, "load_data", lambda *a, **k: pytest.fail("data loaded"))
    try:
        with pytest.raises(RunDirError, match=f"cannot write to run folder {out}: Permission denied"):
            train(cfg(mini_root), out=out, quiet=True)
    finally:
        out.chmod(0o700)


# ---------------------------------------------------------------------------
# two runs, one folder


def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_goes_on(mini_root, tmp_path, capsys):
    out = tmp_path / "run"
    first = start_cli("train", *small_args(mini_root), "--epochs", "30", "--out", str(out))
    try:
        wait_for_lines(first, 2)  # so epoch 1's last.ckpt exists, for the --resume
        for args in (["--out", str(out), *small_args(mini_root)], ["--resume", str(out)]):
            rc = main(["train", *args])
            err = capsys.readouterr().err
            assert rc == 2, err
            assert f"{out} is in use by another mnistlab run (pid {first.pid})" in err
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGINT)
        rc, _, stderr = finish(first)
    assert rc == 130, stderr
    read_checkpoint(out / "last.ckpt")


def test_runs_without_out_started_in_the_same_second_get_distinct_folders(tmp_path):
    folders = [run_module.default_run_dir("cnn", tmp_path / "runs") for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)  # each one claimed by creating it


def test_a_folder_with_files_of_a_run_that_never_finished_an_epoch_is_refused(mini_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("# the run that wrote this was killed in its first epoch\n")
    (out / "run.lock").write_text("999999999")  # ... and left its lock (no such process)
    before = snapshot(out)
    rc = main(["train", *small_args(mini_root), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{out} already holds files of another run (config.toml) but no last.ckpt to continue from" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("made", ["report.html", "plots", "tensorboard", "ema.ckpt", "test_predictions.npz"])
def test_a_folder_holding_a_report_or_other_files_of_a_run_is_refused(mini_root, tmp_path, capsys, made):
    # `mnistlab report runs/a --out shared/`, then `mnistlab train --out shared/`: run a's report was replaced
    # without a word, and the new run's files mixed with it.
    out = tmp_path / "shared"
    out.mkdir()
    (out / made).mkdir() if "." not in made else (out / made).write_text("mine\n")
    before = snapshot(out)
    assert main(["train", *small_args(mini_root), "--out", str(out)]) == 2
    assert f"{out} already holds files of another run ({made}) but no last.ckpt" in capsys.readouterr().err
    assert snapshot(out) == before


class HoldAtEpochEnd(Callback):
    """Keeps a run at the end of its second epoch (epoch 1's last.ckpt written) until released."""

    def __init__(self) -> None:
        self.reached, self.release = threading.Event(), threading.Event()

    def on_epoch_end(self, epoch, metrics, trainer):
        if epoch == 2:
            self.reached.set()
            assert self.release.wait(60)


def test_a_second_run_in_the_same_process_is_refused_while_the_first_goes_on(mini_root, tmp_path):
    # The lock holds this process's pid either way; only the process's own record tells a live run from a stale lock.
    out = tmp_path / "run"
    cfg = apply_overrides(Config(), small_overrides(mini_root, "train.epochs=3"))
    hold, results = HoldAtEpochEnd(), []
    first = threading.Thread(target=lambda: results.append(train(cfg, out=out, callbacks=[hold], quiet=True)))
    first.start()
    try:
        assert hold.reached.wait(60)
        with pytest.raises(RunDirError, match=f"{out} is in use by another mnistlab run in this process"):
            train(cfg, out=out, quiet=True)
        with pytest.raises(RunDirError, match="in use by another mnistlab run in this process"):
            train(cfg, resume=out, quiet=True)  # it would have taken the lock over and trained beside the first
        assert (out / "run.lock").read_text().split()[0] == str(os.getpid())
    finally:
        hold.release.set()
        first.join(60)
    assert results and results[0].summary["epochs"] == 3  # the first run finished undisturbed
    assert not (out / "run.lock").exists()


def test_a_stale_lock_with_this_processes_pid_is_taken_over(tmp_path):
    # A container restarted after a kill gives the new run the pid of the old one, whose lock is then stale.
    (tmp_path / "run.lock").write_text(str(os.getpid()))
    (tmp_path / f".last.ckpt.tmp-{os.getpid()}").write_bytes(b"half a checkpoint")
    with run_module.RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
        assert not list(tmp_path.glob(".*.tmp-*"))  # the killed run's half-written file is gone
    assert not (tmp_path / "run.lock").exists()


def test_the_free_space_check_counts_the_copies_ema_and_restore_best_weights_add(monkeypatch, tmp_path):
    from torch import nn

    from mnistlab import Config, apply_overrides
    from mnistlab.training.run import check_free_space

    model = nn.Linear(1024, 1024)  # 4 MiB of weights
    usage = namedtuple("usage", "total used free")
    plain = Config()
    both = apply_overrides(plain, ["ema.enabled=true", "early_stopping.restore_best_weights=true"])
    # last.ckpt and its temporary of 3 copies, best.ckpt and one top-k file of one: about 36 MiB; with both options
    # the training state holds 5 copies, and ema.ckpt is a third model: about 57 MiB
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, 50 * 2**20))
    check_free_space(tmp_path, model, plain)
    with pytest.raises(RunDirError, match=r"50.0 MiB free, but its checkpoints need about 57.\d MiB"):
        check_free_space(tmp_path, model, both)


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    # After a reboot or a container restart the pid in a stale lock may be in use again (here pid 1, alive in
    # every Linux system): the start time in the lock tells that process from the run that wrote it.
    started = run_module._process_start(1)
    assert started is not None  # Linux's /proc (elsewhere locks hold the pid alone, as before)
    (tmp_path / "run.lock").write_text(f"1 {int(started) + 12345}")
    with run_module.RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()} {run_module._process_start(os.getpid())}"
    (tmp_path / "run.lock").write_text(f"1 {started}")  # pid 1 itself: held, and the message says what to do
    with pytest.raises(RunDirError, match=f"in use by another mnistlab run \\(pid 1\\); wait for it to finish. If no "
                                          f"mnistlab run uses the folder, delete {tmp_path / 'run.lock'}"):
        run_module.RunLock(tmp_path).__enter__()
    assert (tmp_path / "run.lock").read_text() == f"1 {started}"  # untouched


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_training(mini_root, tmp_path, monkeypatch, capsys):
    # The model builds (its dry run takes 2 images), but 256 images of 20,000 feature maps of 28x28 do not
    # fit: the allocator's traceback (or the OOM killer) came at the first batch, with the run folder made.
    import sys

    fit_module = sys.modules["mnistlab.training.fit"]
    monkeypatch.setattr(fit_module, "available_memory", lambda: 8 * 2**30)
    out = tmp_path / "run"
    rc = main(["train", *small_args(mini_root), "--model", "cnn", "--set", "model.channels=[20000]",
               "--batch-size", "256", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "error: a training batch of 256 needs about 23.0 GiB" in err and "GiB (the layers' outputs, 89.7 MiB an " \
        "image, and the weights with their gradients and optimizer moments), but this machine has 8.0 GiB free; " \
        "lower train.batch_size, model.width or the channel counts" in err
    assert not out.exists()
    # a batch that fits trains as before
    assert fit_module.check_training_memory(build_model("cnn"), SimpleNamespace(in_channels=1, image_size=(28, 28)),
                                            256) is None
    # A batch size above the training split is a full-batch run: its batches hold the 500 images, not a million
    # (it was refused as needing 100 GiB).
    rc = main(["train", *small_args(mini_root), "--batch-size", "1000000", "--epochs", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err


def test_the_free_space_check_counts_the_checkpoints_a_resumed_run_replaces_as_free(tmp_path, monkeypatch):
    # A run that started on a disk with just enough room could not be resumed there: its own checkpoints were
    # counted as used, and the message said to choose another --out, which --resume cannot.
    from mnistlab.training.run import check_free_space

    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights
    cfg = apply_overrides(Config(), ["train.epochs=1"])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, 30 * 2**20))
    with pytest.raises(RunDirError, match=r"30.0 MiB free, but its checkpoints need about 34.\d MiB; free some "
                                          r"space or choose another --out$"):
        check_free_space(tmp_path, model, cfg)
    for name in ("last.ckpt", "best.ckpt"):
        (tmp_path / name).write_bytes(b"\0" * (13 * 2**20))  # what they take up now; each is rewritten in place
    check_free_space(tmp_path, model, cfg)
    (tmp_path / "best.ckpt").unlink()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, 20 * 2**20))
    with pytest.raises(RunDirError, match=r"33.0 MiB free \(with the 13.0 MiB of the checkpoints it replaces\), but "
                                          r"its checkpoints need about 34.\d MiB; free some space$"):
        check_free_space(tmp_path, model, cfg)


def test_a_lock_that_cannot_be_removed_does_not_hide_the_error_that_ended_the_run(tmp_path, monkeypatch):
    # A folder made read-only mid-run: the lock's unlink raised in __exit__, and its OSError traceback (exit 1)
    # replaced the checkpoint error that had ended the run.
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name == "run.lock":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(CheckpointError, match="the error that ended the run"):
        with run_module.RunLock(tmp_path):
            raise CheckpointError("the error that ended the run")


def test_a_learning_rate_past_float32_is_a_divergence_stop_not_a_traceback(mini_root, tmp_path):
    # SGD's foreach step raised "value cannot be converted to type float without overflow" for a rate above
    # float32's maximum (lr 1e39, or a step schedule with gamma 1e200): a traceback, and a run folder with no
    # summary. An infinite rate diverges, and the run stops as any diverged run does.
    result = train(cfg(mini_root, "train.epochs=1", "optimizer.name=sgd", "optimizer.lr=1e39",
                       "schedule.name=constant"), out=tmp_path / "run", quiet=True)
    assert result.summary["stopped_by"] == "non_finite_loss"


def test_the_divergence_warning_names_where_a_mid_epoch_last_ckpt_stands(mini_root, tmp_path, capsys):
    # With checkpoint.last_every_n_steps the warning said "no epoch finished, so no checkpoint was written" of
    # a run whose last.ckpt held step 2, and "the state after epoch 1" of one whose last.ckpt held a later step.
    import re

    train(cfg(mini_root, "train.epochs=2", "optimizer.name=sgd", "optimizer.lr=1e12", "schedule.name=constant",
              "checkpoint.last_every_n_steps=1"), out=tmp_path / "run", quiet=True)
    err = capsys.readouterr().err
    # in the resume line's words (it said "after batch 3 of epoch 1" where the resume said "inside epoch 1, ...")
    said = re.search(r"last\.ckpt holds the state inside epoch 1, after batch (\d+) of 5;", err)
    assert said, err
    last = read_checkpoint(tmp_path / "run" / "last.ckpt")
    assert (last["epoch"], last["batch"]) == (0, int(said.group(1)))
    assert all(bool(torch.isfinite(w).all()) for w in last["model"].values())  # the diverged weights are not saved


def test_a_tensorboard_summary_that_cannot_be_written_comes_after_the_report_and_results(mini_root, tmp_path, capsys,
                                                                                          monkeypatch):
    # The TensorBoard end-of-run summary was written before the report: a folder that could no longer be written
    # there ended the run without test_predictions.npz, report.html or the test accuracy line.
    from mnistlab.callbacks import TensorBoard

    real, calls = TensorBoard._write_end, []

    def write_end(self):
        calls.append(1)
        if len(calls) == 2:  # the first is on_train_end's; the second add_run_summary's, after the test
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "my run" / "tensorboard" / "x.end"))
        real(self)

    monkeypatch.setattr(TensorBoard, "_write_end", write_end)
    with pytest.raises(RunDirError, match="cannot write the TensorBoard run summary .*No space left on device"):
        train(cfg(mini_root, "train.epochs=1", "tensorboard.enabled=true", "train.report=true"),
              out=tmp_path / "my run")
    out = capsys.readouterr().out
    assert "report: (skipped)" in out  # the report was written (by the stand-in these tests put in its place)
    assert "test accuracy " in out and (tmp_path / "my run" / "summary.json").is_file()
    assert f"run folder: '{tmp_path / 'my run'}'\n" in out  # quoted, to paste into a shell (it was not)
