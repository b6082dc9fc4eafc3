"""Gaps in "Interruptions lose nothing" (README, Guarantees) found by an audit that signalled runs at random and
chosen moments: a signal as training begins, signals ignored when the run started (nohup), a run folder whose name
begins with "-", a kill -9 inside the report, a Ctrl-C while the command exits. Each test failed before its fix.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mnistlab import Config, apply_overrides, train
from mnistlab.callbacks import Callback
from mnistlab.training.fit import TrainingInterrupted

from reliability_helpers import ENV, MAIN, cli_command, finish, run_cli, small_args, small_overrides, start_cli

# A callback added to the run's own (through build_callbacks) sends `SIG` to the process in its
# on_train_begin: after config.toml is written and "training ..." is printed, before the first step.
SIGNAL_AS_TRAINING_BEGINS = r"""
import os, signal
import mnistlab.training.run as run_module
from mnistlab.callbacks import Callback
class SignalAtBegin(Callback):
    def on_train_begin(self, trainer):
        os.kill(os.getpid(), signal.{sig})
real_build = run_module.build_callbacks
run_module.build_callbacks = lambda cfg, run_dir: real_build(cfg, run_dir) + [SignalAtBegin()]
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_as_training_begins_leaves_a_folder_that_can_be_resumed_or_trained_again(mini_root, tmp_path, name):
    # README: "Ctrl-C, SIGTERM or SIGHUP ... during training saves the position inside the epoch to last.ckpt
    # ... prints `resume with: ...`". The trainer's handler is set only after the callbacks' on_train_begin
    # (TensorBoard's graph and images take most of a second there), after config.toml is written and the
    # "training ..." line is printed. A signal in that window took Python's default: no resume line, and a
    # folder holding config.toml (and tensorboard/) without last.ckpt, which `--resume` refuses ("no last.ckpt")
    # and a new run into the same --out refuses too ("already holds files of another run").
    out = tmp_path / "run"
    args = small_args(mini_root, "--epochs", "1", "--out", str(out))
    rc, stdout, stderr = finish(start_cli("train", *args, patch=SIGNAL_AS_TRAINING_BEGINS.replace("{sig}", name)))
    assert any(line.startswith("training ") for line in stdout.splitlines()), stdout  # the user saw it start
    assert rc == 128 + getattr(signal, name), (rc, stderr)
    # caught: the run stops after its first step, saved, and says how to go on
    assert f"resume with: mnistlab train --resume {out}" in stderr, stderr
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 0, (stderr, resumed.stderr)


# fit.iterate_batches patched: the process gets `sig` while step 2 of epoch 1 runs.
SIGNAL_AT_STEP_2 = r"""
import importlib, os, signal
fit = importlib.import_module("mnistlab.training.fit")
real_iterate_batches = fit.iterate_batches
def iterate_batches(*args, **kwargs):
    for i, batch in enumerate(real_iterate_batches(*args, **kwargs)):
        if i == 1:
            os.kill(os.getpid(), signal.{sig})
        yield batch
fit.iterate_batches = iterate_batches
"""


@pytest.mark.parametrize("name", ["SIGHUP", "SIGINT"])
def test_a_signal_ignored_when_the_run_started_stays_ignored(mini_root, tmp_path, name):
    # `nohup mnistlab train ...` starts the run with SIGHUP ignored, so that closing the terminal does not stop it;
    # a background job of a shell script (`mnistlab train ... &`) starts with SIGINT ignored, so that Ctrl-C
    # meant for the foreground does not reach it. The trainer's handler replaced SIG_IGN for the whole
    # training: the terminal closing stopped a nohup run (exit 129), as if nohup had not been used.
    out = tmp_path / "run"
    sig = getattr(signal, name)
    proc = subprocess.Popen(
        cli_command("train", *small_args(mini_root, "--epochs", "1", "--out", str(out)),
                    patch=SIGNAL_AT_STEP_2.replace("{sig}", name)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN),
    )
    rc, _, stderr = finish(proc)
    assert rc == 0, stderr
    assert json.loads((out / "summary.json").read_text())["stopped_by"] == "max_epochs"


class CtrlCAtStep3(Callback):
    def on_batch_end(self, step, metrics, trainer):
        if step == 3:
            import os

            os.kill(os.getpid(), signal.SIGINT)


def test_the_resume_line_of_a_folder_whose_name_begins_with_a_dash_works_as_printed(mini_root, tmp_path,
                                                                                    monkeypatch):
    # README: Ctrl-C "prints `resume with: mnistlab train --resume RUN`". For --out ./-run the folder is
    # printed as "-run" (Path drops the "./", shlex.quote leaves it bare), which argparse reads as an option:
    # "argument --resume: expected one argument".
    from mnistlab.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(Config(), small_overrides(mini_root, "train.epochs=1"))
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, out="./-run", callbacks=[CtrlCAtStep3()], quiet=True)
    line = info.value.advice.splitlines()[-1]
    assert line.startswith("resume with: mnistlab train "), line
    argv = shlex.split(line.removeprefix("resume with: mnistlab "))
    try:
        code = main([*argv, "--quiet"])
    except SystemExit as e:  # argparse's refusal
        code = e.code
    assert code == 0, line


# atomic_write patched: the first plot of the report is cut halfway by a kill -9.
KILL_9_IN_A_PLOT = r"""
import io, os, signal
import mnistlab.training.checkpoint as checkpoint
real_atomic_write = checkpoint.atomic_write
def atomic_write(path, write):
    if path.parent.name == "plots":
        def half(f):
            buf = io.BytesIO()
            write(buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_atomic_write(path, half)
    return real_atomic_write(path, write)
checkpoint.atomic_write = atomic_write
"""


def test_resume_after_a_kill_9_in_the_report_removes_the_half_written_plot(mini_root, tmp_path):
    # README: kill -9 at any moment ... "`--resume` continues from the last complete `last.ckpt` ... and removes
    # the half-written file." The lock takeover removes `.*.tmp-PID` in the run folder only; report.html's
    # plots are written the same way into plots/, where a half-written `.NAME.png.tmp-PID` stayed for good.
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_9_IN_A_PLOT + MAIN, "train",
                           *small_args(mini_root, "--epochs", "1", "--out", str(out))],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list((out / "plots").glob(".*.tmp-*")), "the kill did not come halfway through a plot"
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp-" in p.name)
    assert left == [], left


# An exit handler, registered last so that it runs first at exit, stands for the moment a Ctrl-C comes while
# mnistlab.cli.run() runs the atexit handlers (torch's finalizers and others: a good part of a second).
CTRL_C_WHILE_EXITING = r"""
import atexit, os, signal, time
def ctrl_c_now():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
atexit.register(ctrl_c_now)
"""


def test_a_ctrl_c_while_the_command_exits_prints_no_traceback():
    # Seen with the random driver: the first Ctrl-C stopped a resumed run in its report ("mnistlab train:
    # interrupted by SIGINT", 130) and the second, 0-0.4 s later, came while mnistlab.cli.run() ran the atexit
    # handlers: "Exception ignored in atexit callback ... torch/library.py ... KeyboardInterrupt" followed the
    # one line. README: a second Ctrl-C "exits at once"; the commands stop on Ctrl-C "with one line".
    proc = subprocess.run(cli_command("models", patch=CTRL_C_WHILE_EXITING), capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr


# A function of training/run.py patched: the process gets `{sig}` as `{name}` is called, before the call.
SIGNAL_AT_CALL = r"""
import os, signal
import mnistlab.training.run as run_module
real = getattr(run_module, "{name}")
def signal_then_call(*args, **kwargs):
    os.kill(os.getpid(), signal.{sig})
    return real(*args, **kwargs)
setattr(run_module, "{name}", signal_then_call)
"""


def signal_at_call(sig: str, name: str) -> str:
    return SIGNAL_AT_CALL.replace("{sig}", sig).replace("{name}", name)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_the_final_test_says_how_to_finish_the_run(mini_root, tmp_path, name):
    # After the trainer's steps its handler is gone: a SIGTERM during the final test ended the process without
    # a word (the shell showed 143) and a Ctrl-C said only "interrupted by SIGINT". The run is trained and
    # saved, and a resume then only tests it and writes summary.json: the lines now say so.
    out = tmp_path / "run"
    rc, stdout, stderr = finish(start_cli("train", *small_args(mini_root, "--epochs", "1", "--out", str(out)),
                                          patch=signal_at_call(name, "evaluate")))
    assert rc == 128 + getattr(signal, name), (rc, stderr)
    assert stderr.splitlines()[-2:] == [f"mnistlab train: interrupted by {name}",
                                        f"resume with: mnistlab train --resume {out}"], stderr
    assert "Traceback" not in stderr and not (out / "summary.json").exists()
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 0 and "nothing is left to train" in resumed.stdout, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] > 0.2


def test_a_sigterm_while_the_data_loads_is_one_line_and_leaves_no_folder(mini_root, tmp_path):
    # Before training there is nothing to resume: one line, exit 143, and the folder the run made is gone (a
    # SIGTERM there used to end the process silently, leaving the new folder behind).
    out = tmp_path / "new" / "run"
    rc, stdout, stderr = finish(start_cli("train", *small_args(mini_root, "--out", str(out)),
                                          patch=signal_at_call("SIGTERM", "load_data")))
    assert (rc, stderr) == (143, "mnistlab train: interrupted by SIGTERM\n")
    assert not (tmp_path / "new").exists()


def test_a_sigterm_while_lr_find_loads_its_data_is_one_line(mini_root, tmp_path):
    # lr-find kept SIGTERM's default outside its steps: the process ended without a word (the shell showed 143).
    patch = SIGNAL_AT_CALL.replace("mnistlab.training.run", "mnistlab.training.lr_find").replace(
        "{sig}", "SIGTERM").replace("{name}", "load_data")
    rc, stdout, stderr = finish(start_cli("lr-find", "--data-dir", str(mini_root), "--dataset", "kmnist",
                                          "--plot", str(tmp_path / "p.png"), patch=patch))
    assert (rc, stderr) == (143, "mnistlab lr-find: interrupted by SIGTERM\n")
    assert list(tmp_path.iterdir()) == []
