"""An audit of the README's Guarantees: promises whose tests checked less than the README says.

Each test names the promise it checks, in the README's words.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from mnistlab.callbacks import Callback
from mnistlab.cli import main
from mnistlab.config import Config, apply_overrides
from mnistlab.training import TrainingInterrupted, train
from mnistlab.training.checkpoint import read_checkpoint
from reliability_helpers import finish, send, small_args, small_overrides, snapshot, start_cli
from test_interrupts import SLOW_INTERRUPT_SAVE, signal_at_step


def _train(out: Path, root: Path, *extra: str, callbacks=()) -> Path:
    import types

    import mnistlab.report

    with pytest.MonkeyPatch.context() as mp:  # no report.html, as in conftest._no_report
        mp.setattr(mnistlab.report, "write_run_report", lambda *a, **k: types.SimpleNamespace(path="-"))
        train(apply_overrides(Config(), small_overrides(root, *extra)), out=out, quiet=True,
              callbacks=list(callbacks))
    return out


@pytest.fixture(scope="module")
def two_epochs(mini_root, tmp_path_factory) -> Path:
    """A finished run of 2 epochs of 5 steps (500 images in batches of 100)."""
    return _train(tmp_path_factory.mktemp("two") / "run", mini_root, "train.epochs=2", "schedule.name=constant")


class CtrlCAtStep7(Callback):
    def on_batch_end(self, step, metrics, trainer):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def mid_epoch(mini_root, tmp_path_factory) -> Path:
    """A run interrupted after step 7 of 10: its last.ckpt is inside epoch 2, after batch 2."""
    out = tmp_path_factory.mktemp("mid") / "run"
    with pytest.raises(TrainingInterrupted):
        _train(out, mini_root, "train.epochs=2", "schedule.name=constant", callbacks=[CtrlCAtStep7()])
    return out


def _refused(capsys, argv: list[str], message: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


# README: "What cannot be continued exactly is refused (exit 2, nothing written)". The unit tests in
# tests/training raise the error through train(); these go through the command and check that no file changes.
@pytest.mark.parametrize("args, message", [
    (["--epochs", "1"], "train.epochs is 1, but the run has trained 2 epochs: resume with --epochs 2"),
    (["--set", "train.max_steps=3"], "train.max_steps is 3, but the run has taken 10 steps"),
    (["--set", 'finetune.freeze=["features"]'], "finetune.freeze was [], now ['features']"),
    (["--set", "model.width=0.5"], "model.width was"),
    (["--set", "model.dropout=0.3"], "now 0.3: turning dropout on adds"),
    (["--optimizer", "sgd"], "optimizer.name was adam, now sgd"),
    (["--dataset", "mnist"], "data.dataset was kmnist, now mnist"),
])
def test_a_resume_the_state_cannot_follow_is_refused_and_writes_nothing(two_epochs, tmp_path, capsys, args, message):
    run = shutil.copytree(two_epochs, tmp_path / "run")
    before = snapshot(run)
    _refused(capsys, ["train", "--resume", str(run), "--epochs", "3", *args], message)
    assert snapshot(run) == before


def test_a_resume_with_another_init_from_is_refused_and_writes_nothing(two_epochs, tmp_path, capsys):
    run = shutil.copytree(two_epochs, tmp_path / "run")
    other = shutil.copytree(two_epochs, tmp_path / "other")
    before = snapshot(run)
    _refused(capsys, ["train", "--resume", str(run), "--epochs", "3", "--init-from", str(other / "best.ckpt")],
             "init")
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["best.ckpt", "copy.ckpt"])
def test_resume_from_a_file_other_than_last_ckpt_is_refused_and_writes_nothing(two_epochs, tmp_path, capsys, name):
    # best.ckpt holds a model, not the training state; a renamed copy of last.ckpt would write over its folder's
    run = shutil.copytree(two_epochs, tmp_path / "run")
    shutil.copy(run / "last.ckpt", run / "copy.ckpt")
    before = snapshot(run)
    _refused(capsys, ["train", "--resume", str(run / name), "--epochs", "3"], name)
    assert snapshot(run) == before


# README: "for a run interrupted inside an epoch, another train.batch_size, train.seed or data split (val_size,
# split_seed, train_limit), under which its place in the epoch would mean other images" is refused.
@pytest.mark.parametrize("setting", ["train.batch_size=50", "train.seed=7", "data.split_seed=7",
                                     "data.val_size=250", "data.train_limit=400"])
def test_a_run_stopped_inside_an_epoch_refuses_another_batch_order(mid_epoch, tmp_path, capsys, setting):
    run = shutil.copytree(mid_epoch, tmp_path / "run")
    last = read_checkpoint(run / "last.ckpt")
    assert (last["epoch"], last["batch"]) == (1, 2)  # the fixture's premise: inside epoch 2
    before = snapshot(run)
    rc = main(["train", "--resume", str(run), "--set", setting])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert setting.split("=")[0] in err, err
    assert snapshot(run) == before


# The checkpoint written after the signal (the only one with a position in the epoch) is slow.
SLOW_SAVE_AFTER_SIGTERM_AT_STEP_3_OF_EPOCH_2 = SLOW_INTERRUPT_SAVE + signal_at_step("SIGTERM", epoch=2, step=3)


def test_a_second_sigterm_exits_at_once_with_143_and_corrupts_nothing(mini_root, tmp_path):
    # README: "A second Ctrl-C exits at once (130; 143 for a SIGTERM) and leaves the last complete last.ckpt
    # untouched, with the same resume line". The test of it sent SIGINT only; a second SIGTERM was os._exit(143)
    # without a word.
    out = tmp_path / "run"
    proc = start_cli("train", *small_args(mini_root, "--epochs", "3", "--batch-size", "50", "--out", str(out)),
                     patch=SLOW_SAVE_AFTER_SIGTERM_AT_STEP_3_OF_EPOCH_2)
    deadline = time.monotonic() + 60
    while not ((out / "last.ckpt").exists() and list(out.glob(".last.ckpt.tmp-*"))):
        assert time.monotonic() < deadline and proc.poll() is None, "the interrupt checkpoint was never started"
        time.sleep(0.02)
    before = (out / "last.ckpt").read_bytes()
    t0 = time.monotonic()
    send(proc, signal.SIGTERM)
    rc, _, stderr = finish(proc, timeout=30)
    assert rc == 143 and time.monotonic() - t0 < 10, (rc, stderr)
    assert stderr.rstrip().endswith(f"resume with: mnistlab train --resume {out}"), stderr
    assert (out / "last.ckpt").read_bytes() == before
    assert read_checkpoint(out / "last.ckpt")["epoch"] == 1


def test_a_full_disk_found_before_training_leaves_no_new_parent_folders(mini_root, tmp_path, monkeypatch, capsys):
    # README: a disk without room is an error before training starts; "no run folder is left behind": with
    # --out naming folders that do not exist yet, none of them.
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(2**20, 2**19, 2**19))
    out = tmp_path / "a" / "b" / "run"
    rc = main(["train", *small_args(mini_root), "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "not enough free space" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_into_a_path_through_a_new_folder_and_dot_dot_leaves_no_folder(mini_root, tmp_path, capsys,
                                                                                     monkeypatch):
    # --out new/../run: the folders made are new/ and run/ (new/.. is the current folder): both go again.
    monkeypatch.chdir(tmp_path)
    rc = main(["train", *small_args(mini_root), "--set", "data.val_size=2000", "--out", "new/../run"])
    err = capsys.readouterr().err
    assert rc == 2 and "leaves no training images" in err, err
    assert list(tmp_path.iterdir()) == []


# A function patched in the subprocess: the process gets SIGTERM as it is called, before the call.
SIGTERM_AT_CALL = r"""
import importlib, os, signal
module = importlib.import_module("{module}")
real = getattr(module, "{name}")
def signal_then_call(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
setattr(module, "{name}", signal_then_call)
"""


@pytest.mark.parametrize("command, module, name", [
    ("evaluate", "mnistlab.training.evaluate", "evaluate"),
    ("ensemble", "mnistlab.training.ensemble", "evaluate"),
    ("predict", "mnistlab.predict", "predict_files"),
])
def test_a_sigterm_stops_a_command_that_does_not_train_with_one_line_and_143(two_epochs, mini_root, tmp_path,
                                                                               command, module, name):
    # README: evaluate, ensemble, predict, ... "stop on Ctrl-C or SIGTERM with one line, `mnistlab COMMAND:
    # interrupted by SIGINT` (or `SIGTERM`), exit 130 / 143". The test of evaluate and ensemble raised
    # KeyboardInterrupt in the process, never a real SIGTERM.
    args = [str(two_epochs), "--data-dir", str(mini_root)]
    if command == "predict":
        import numpy as np
        from PIL import Image

        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
        args = [str(two_epochs / "best.ckpt"), str(tmp_path / "x.png")]
    patch = SIGTERM_AT_CALL.replace("{module}", module).replace("{name}", name)
    rc, stdout, stderr = finish(start_cli(command, *args, patch=patch))
    assert (rc, stderr) == (143, f"mnistlab {command}: interrupted by SIGTERM\n"), (rc, stdout, stderr)


def test_a_run_folder_given_with_a_tilde_is_in_the_home_folder(mini_root, tmp_path, monkeypatch, capsys):
    # README (bad input): "a `~` path for a user with no home folder" is refused: a `~` path is a home folder
    # path, as for --config, --init-from, --resume, data.dir and export's --out. `--out=~/runs/a` reaches
    # mnistlab unexpanded (the shell expands a ~ only at the start of a word).
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    rc = main(["train", *small_args(mini_root), "--epochs", "1", "--quiet", "--out=~/runs/a"])
    err = capsys.readouterr().err
    assert not (tmp_path / "~").exists()
    assert rc == 0, err
    assert (tmp_path / "home" / "runs" / "a" / "best.ckpt").is_file()
