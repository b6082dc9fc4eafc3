"""Ctrl-C, SIGTERM and kill -9 at any moment lose nothing, and a resumed run ends exactly like an uninterrupted one.

Every run here is a real ``mnistlab train`` subprocess on ``mini_root`` (real MNIST
digits, 500 training images), with dropout, early stopping and ReduceLROnPlateau
so that the RNG state, the callbacks' state and the learning-rate scale all have
to survive each interruption. The uninterrupted run of the same config is made
once per module (``reference``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from mnistlab import Config, apply_overrides, train
from mnistlab.callbacks import Callback
from mnistlab.training.checkpoint import read_checkpoint

from reliability_helpers import (
    SIGNAL_CODES,
    assert_same_weights,
    finish,
    is_epoch_row,
    metrics_rows,
    run_cli,
    send,
    small_args,
    small_overrides,
    start_cli,
    wait_for_start,
)

EPOCHS = 10


def kill_args(root: Path) -> list[str]:
    # Measured on mini_root: early stopping ends this run at epoch 6 of 10, after a
    # learning-rate reduction at epoch 5; the reference fixture checks that both happen.
    return small_args(
        root,
        "--epochs", str(EPOCHS), "--optimizer", "adam", "--lr", "0.005", "--set", "schedule.name=constant",
        "--set", "model.dropout=0.25", "--early-stopping", "patience:2", "--set", "early_stopping.min_delta=0.05",
        "--set", "reduce_lr.enabled=true", "--set", "reduce_lr.patience=1", "--set", "reduce_lr.threshold=0.1",
    )


@pytest.fixture(scope="module")
def reference(mini_root, tmp_path_factory) -> tuple[Path, float]:
    """The uninterrupted run, and the seconds an epoch takes on this machine now (from its output)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = start_cli("train", *kill_args(mini_root), "--out", str(out))
    rows = []
    for line in proc.stdout:
        if is_epoch_row(line):
            rows.append(time.monotonic())
    rc, _, stderr = finish(proc)
    assert rc == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    # The run must exercise what resume has to restore: an early stop and learning-rate reductions.
    assert summary["stopped_by"] == "early_stopping" and summary["epochs"] < EPOCHS, summary["stop_reason"]
    lrs = [float(r["lr"]) for r in metrics_rows(out)]
    assert lrs[-1] < lrs[0], lrs
    return out, (rows[-1] - rows[0]) / (len(rows) - 1)


def assert_same_run(run: Path, reference: Path) -> None:
    """Final weights, best weights, every metric but the seconds, and how and when it stopped."""
    assert_same_weights(run / "last.ckpt", reference / "last.ckpt")
    assert_same_weights(run / "best.ckpt", reference / "best.ckpt")
    assert metrics_rows(run) == metrics_rows(reference)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (run, reference))
    same = ("epochs", "steps", "stop_reason", "stopped_by", "best_epoch", "test_accuracy", "test_loss",
            "use_checkpoint")
    assert {k: a[k] for k in same} == {k: b[k] for k in same}
    leftovers = sorted(p.name for p in run.iterdir() if p.name.startswith(".") or p.name == "run.lock")
    assert leftovers == [], leftovers  # no lock, no temporary file


def signal_after(proc: subprocess.Popen, signum: int, seconds: float, row: int | None) -> tuple[int, str, str]:
    """Send ``signum`` ``seconds`` after training starts, or earlier when the row of epoch ``row`` is printed.

    Returns what :func:`finish` returns. stdout and stderr are read by threads meanwhile, so that the
    rows are seen as they come and neither pipe can fill up.
    """
    wait_for_start(proc)
    row_seen, out, err = threading.Event(), [], []

    def read_stdout() -> None:
        for line in proc.stdout:
            out.append(line)
            if row is not None and is_epoch_row(line) and int(line.split()[0]) >= row:
                row_seen.set()
        row_seen.set()  # the process ended: no row will come

    readers = [threading.Thread(target=read_stdout), threading.Thread(target=lambda: err.append(proc.stderr.read()))]
    for t in readers:
        t.start()
    row_seen.wait(timeout=seconds)
    send(proc, signum)
    rc = proc.wait(timeout=120)
    for t in readers:
        t.join(timeout=120)
    return rc, "".join(out), "".join(err)


def training_done(last: dict) -> bool:
    return last["stop_reason"] is not None or last["epoch"] == EPOCHS


def test_killed_at_random_moments_then_resumed_ends_identical(mini_root, reference, tmp_path):
    reference, epoch_seconds = reference
    last_epoch = json.loads((reference / "summary.json").read_text())["epochs"]
    rng = random.Random(20261128)
    kinds = [signal.SIGKILL, signal.SIGINT, signal.SIGTERM]
    rng.shuffle(kinds)  # each kind once, in a seeded order; then one random kind
    out = tmp_path / "run"
    sent, interrupt_saves = [], 0
    for attempt in range(20):
        if out.exists() and not (out / "last.ckpt").exists():
            shutil.rmtree(out)  # killed before its first checkpoint: start again, as the refusal message says
        resume = out.exists()
        if resume and training_done(read_checkpoint(out / "last.ckpt")):
            # Only the final test is left: let it run (earlier attempts may have been signalled during it).
            proc = run_cli("train", "--resume", str(out))
            assert proc.returncode == 0 and "nothing is left to train" in proc.stdout, proc.stderr
            break
        if len(sent) > len(kinds) and interrupt_saves:
            # Each kind has interrupted once and one more random moment has come: the rest of the run goes
            # uninterrupted (each further attempt costs a process start; the suite has a time budget).
            proc = run_cli("train", "--resume", str(out))
            assert proc.returncode == 0, proc.stderr
            break
        args = ["--resume", str(out)] if resume else [*kill_args(mini_root), "--out", str(out)]
        proc = start_cli("train", *args)
        # A random moment: 0.6 to 1.8 epochs after training (re)started, whatever this machine's speed. The
        # first signal of each kind comes at the latest when the second-to-last epoch's row is printed, so
        # that it lands while there is training left even if this machine runs faster now than it did for
        # the reference (the test wants each kind to interrupt training once).
        signum = kinds[attempt] if attempt < len(kinds) else rng.choice(kinds)
        seconds = rng.uniform(0.6, 1.8) * epoch_seconds
        rc, stdout, stderr = signal_after(proc, signum, seconds, row=last_epoch - 1 if attempt < len(kinds) else None)
        if rc == 0:
            break  # it finished before the signal came
        sent.append(signum)
        if not (out / "last.ckpt").exists():
            assert signum == signal.SIGKILL and rc == -signal.SIGKILL, (signum, rc, stderr)
            continue
        last = read_checkpoint(out / "last.ckpt")  # whatever the moment, last.ckpt loads
        if "progress saved to" in stderr:
            # During training: the position inside the epoch is saved (or, signalled during validation,
            # the epoch's own last.ckpt is the one to resume), and the message says how to go on.
            assert rc == SIGNAL_CODES[signum] and f"mnistlab train --resume {out}" in stderr, (rc, stderr)
            assert last["batch"] >= 1 or f"after epoch {last['epoch']}" in stderr, stderr
            assert json.loads((out / "summary.json").read_text())["stopped_by"] == "interrupted"
            interrupt_saves += 1
        elif signum == signal.SIGKILL:
            assert rc == -signal.SIGKILL, (rc, stderr)
        else:
            # After training, during the final test (which says how to finish the run) or the exit: the last
            # epoch is saved, so nothing is lost.
            assert rc in (SIGNAL_CODES[signum], -signum), (rc, stderr)
            assert training_done(last), stdout
    else:
        pytest.fail(f"the run did not finish after {len(sent)} interruptions")
    assert len(sent) >= 3 and set(sent) == set(kinds), sent
    assert interrupt_saves >= 1
    assert_same_run(out, reference)


# torch.save patched: the nth write of sys.argv[1] stops halfway with a kill -9 (sys.argv[2] is n).
KILL_DURING_SAVE = r"""
import io, os, signal
import torch
target, nth = sys.argv.pop(1), int(sys.argv.pop(1))
real_save, count = torch.save, 0
def save(obj, f, *args, **kwargs):
    global count
    if os.path.basename(getattr(f, "name", "")).startswith(f".{target}.tmp-"):
        count += 1
        if count == nth:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
"""


def test_kill_9_halfway_through_a_checkpoint_write_keeps_the_previous_one(mini_root, reference, tmp_path):
    reference, _ = reference
    out = tmp_path / "run"
    # 1. Killed while writing epoch 2's last.ckpt: epoch 1's stays.
    proc = start_cli("last.ckpt", "2", "train", *kill_args(mini_root), "--out", str(out), patch=KILL_DURING_SAVE)
    rc, _, stderr = finish(proc)
    assert rc == -signal.SIGKILL, stderr
    half = list(out.glob(".last.ckpt.tmp-*"))
    assert len(half) == 1 and half[0].stat().st_size > 0  # the kill really came in the middle of the write
    assert read_checkpoint(out / "last.ckpt")["epoch"] == 1
    best_before = (out / "best.ckpt").read_bytes()
    read_checkpoint(out / "best.ckpt")

    # 2. Resumed, and killed while writing the next best.ckpt: the previous best.ckpt stays, byte for byte.
    rc, stdout, stderr = finish(start_cli("best.ckpt", "1", "train", "--resume", str(out), patch=KILL_DURING_SAVE))
    assert rc == -signal.SIGKILL and "resuming" in stdout and "after epoch 1" in stdout, stderr
    assert len(list(out.glob(".best.ckpt.tmp-*"))) == 1
    assert not list(out.glob(".last.ckpt.tmp-*"))  # the killed run's half file was cleaned up on resume
    assert (out / "best.ckpt").read_bytes() == best_before
    read_checkpoint(out / "last.ckpt")

    # 3. Resumed to the end: the same run as one that was never killed.
    proc = run_cli("train", "--resume", str(out))
    assert proc.returncode == 0, proc.stderr
    assert_same_run(out, reference)  # which also checks that no temporary file is left


# Trainer._save_position patched: a kill -9 comes the step after its second write inside an epoch.
KILL_AFTER_TWO_MID_EPOCH_SAVES = r"""
import importlib, os, signal
fit = importlib.import_module("mnistlab.training.fit")
real_save, saves = fit.Trainer._save_position, []
def save_position(self, *args, **kwargs):
    saves.append(1)
    return real_save(self, *args, **kwargs)
fit.Trainer._save_position = save_position
real_received = fit.Trainer._signal_received  # asked after every step
def signal_received(self):
    if len(saves) == 2 and self.step == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_received(self)
fit.Trainer._signal_received = signal_received
"""


def test_kill_9_inside_an_epoch_loses_at_most_n_steps_with_last_every_n_steps(mini_root, reference, tmp_path):
    # checkpoint.last_every_n_steps=2 writes last.ckpt after steps 2 and 4 of epoch 1 (5 steps an epoch); killed
    # during step 5, the run resumes after step 4, not from the start, and ends as the run never killed.
    reference, _ = reference
    out = tmp_path / "run"
    args = [*kill_args(mini_root), "--set", "checkpoint.last_every_n_steps=2", "--out", str(out)]
    rc, _, stderr = finish(start_cli("train", *args, patch=KILL_AFTER_TWO_MID_EPOCH_SAVES))
    assert rc == -signal.SIGKILL, stderr
    last = read_checkpoint(out / "last.ckpt")
    assert (last["epoch"], last["batch"], last["step"], last["resumable"]) == (0, 4, 4, True)
    proc = run_cli("train", "--resume", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "inside epoch 1, after batch 4 of " in proc.stdout
    assert_same_run(out, reference)
    # the training seconds of steps 1-4 count in epoch 1's, and the epochs' add up to the run's (writes excluded)
    import csv

    with open(out / "metrics.csv") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    summary = json.loads((out / "summary.json").read_text())
    assert seconds[0] > last["partial_seconds"] > 0 and sum(seconds) == pytest.approx(summary["train_seconds"])


def signal_at_step(sig: str, epoch: int, step: int) -> str:
    """A patch of fit.iterate_batches: the process gets ``sig`` while ``step`` (1-based) of ``epoch`` runs.

    A fixed point in the run, not a sleep: on a fast CPU an epoch can end within any fixed wait.
    """
    return rf"""
import importlib, os, signal
fit = importlib.import_module("mnistlab.training.fit")  # the module (mnistlab.training also exports a fit function)
real_iterate_batches, epochs = fit.iterate_batches, []
def iterate_batches(*args, **kwargs):
    epochs.append(1)
    for i, batch in enumerate(real_iterate_batches(*args, **kwargs)):
        if len(epochs) == {epoch} and i == {step - 1}:
            os.kill(os.getpid(), signal.{sig})
        yield batch
fit.iterate_batches = iterate_batches
"""


# torch.save patched: the checkpoint written after a signal (the only one with a position in the epoch) is slow.
SLOW_INTERRUPT_SAVE = r"""
import time
import torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("batch"):
        time.sleep(60)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
"""


def test_a_second_ctrl_c_exits_at_once_and_corrupts_nothing(mini_root, tmp_path):
    out = tmp_path / "run"
    # the first Ctrl-C comes mid-epoch (step 21 of 30), so its save is the slow one
    proc = start_cli("train", *kill_args(mini_root), "--out", str(out), "--set", "data.train_limit=300",
                     "--batch-size", "10", patch=SLOW_INTERRUPT_SAVE + signal_at_step("SIGINT", epoch=2, step=21))
    deadline = time.monotonic() + 60
    # The (slow) interrupt checkpoint is being written: a temporary file beside the last.ckpt of epoch 1.
    # (Epoch 1's own write also has a temporary file, but no last.ckpt yet: that is the first one.)
    while not ((out / "last.ckpt").exists() and list(out.glob(".last.ckpt.tmp-*"))):
        assert time.monotonic() < deadline and proc.poll() is None, "the interrupt checkpoint was never started"
        time.sleep(0.02)
    before = (out / "last.ckpt").read_bytes()  # nothing else is written while the loop waits on this write
    t0 = time.monotonic()
    send(proc, signal.SIGINT)
    rc, _, stderr = finish(proc, timeout=30)
    assert rc == 130 and time.monotonic() - t0 < 10  # not the 60 s the write would have taken
    # how to go on from the last complete last.ckpt, as after one Ctrl-C (it said only "interrupted by SIGINT")
    assert stderr.rstrip().endswith(f"resume with: mnistlab train --resume {out}"), stderr
    assert (out / "last.ckpt").read_bytes() == before  # the last complete checkpoint, untouched
    assert read_checkpoint(out / "last.ckpt")["epoch"] == 1  # from the end of epoch 1; epoch 2 was cut at step 21


@pytest.mark.parametrize("name, rc", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_during_the_first_epoch_saves_a_resumable_position(mini_root, tmp_path, name, rc):
    # Before any epoch has finished there is no last.ckpt yet; the interrupt writes the first one. SIGHUP (a closed
    # terminal) took its default in one process: exit 129 at once, the batches lost, no message.
    out = tmp_path / "run"
    proc = start_cli("train", *kill_args(mini_root), "--out", str(out), "--set", "data.train_limit=1500",
                     "--batch-size", "10", patch=signal_at_step(name, epoch=1, step=21))
    code, _, stderr = finish(proc)
    assert code == rc, stderr
    assert f"interrupted by {name} at epoch 1, batch 21 of 150" in stderr
    assert f"resume with: mnistlab train --resume {out}" in stderr
    last = read_checkpoint(out / "last.ckpt")
    assert last["epoch"] == 0 and last["batch"] == 21
    assert torch.equal(last["partial"][2], torch.tensor(210.0, dtype=torch.float64))  # images seen


# fit.evaluate patched: a Ctrl-C arrives while the last epoch is being validated, after its last step.
CTRL_C_IN_LAST_VALIDATION = r"""
import importlib, os, signal
fit = importlib.import_module("mnistlab.training.fit")  # the module (mnistlab.training also exports a fit function)
real_evaluate, calls = fit.evaluate, []
def evaluate(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # epoch 2 of 2
        os.kill(os.getpid(), signal.SIGINT)
    return real_evaluate(*args, **kwargs)
fit.evaluate = evaluate
"""


def test_ctrl_c_during_the_last_validation_is_not_lost(mini_root, tmp_path):
    # The batch loop looks for a signal after each step; one that comes after the last step must
    # still stop the run (a sweep relies on it), from the epoch's own last.ckpt, and resume finishes it.
    out = tmp_path / "run"
    args = small_args(mini_root, "--epochs", "2", "--out", str(out))
    rc, stdout, stderr = finish(start_cli("train", *args, patch=CTRL_C_IN_LAST_VALIDATION))
    assert rc == 130, stderr
    assert "interrupted by SIGINT after epoch 2" in stderr and f"resume with: mnistlab train --resume {out}" in stderr
    assert not stderr.startswith("\n")  # no progress bar to end: a blank line began every such message
    assert "test accuracy" not in stdout.lower()
    last = read_checkpoint(out / "last.ckpt")
    assert last["epoch"] == 2 and last["batch"] == 0
    assert json.loads((out / "summary.json").read_text())["stopped_by"] == "interrupted"
    # Resumed in this process (the command's own main(): a subprocess would spend seconds importing torch for
    # the final test alone); nothing here is compared with a run made in another process.
    from mnistlab.cli import main

    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "max_epochs" and summary["epochs"] == 2 and summary["test_accuracy"] > 0.3


class CtrlCTwice(Callback):
    """Presses Ctrl-C twice, as an impatient user does, at the third batch of epoch 2."""

    def on_epoch_begin(self, epoch, trainer):
        self.epoch, self.batch = epoch, 0

    def on_batch_end(self, step, metrics, trainer):
        self.batch += 1
        if (self.epoch, self.batch) == (2, 3):
            os.kill(os.getpid(), signal.SIGINT)  # the run now stops at the next step...
            os.kill(os.getpid(), signal.SIGINT)  # ...but this one ends it here


def test_a_second_ctrl_c_under_the_api_raises_keyboard_interrupt_and_the_caller_lives_on(mini_root, tmp_path):
    # In a notebook os._exit would kill the kernel; Python's KeyboardInterrupt unwinds the run instead.
    out = tmp_path / "run"
    cfg = apply_overrides(Config(), small_overrides(mini_root, "train.epochs=3", "train.batch_size=50"))
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=out, callbacks=[CtrlCTwice()], quiet=True)
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's Ctrl-C handling is back
    assert not (out / "run.lock").exists()  # unwound: the lock is released
    assert read_checkpoint(out / "last.ckpt")["epoch"] == 1  # the last complete checkpoint, from epoch 1
    resumed = train(cfg, resume=out, quiet=True)  # and the folder resumes
    assert resumed.summary["epochs"] == 3
