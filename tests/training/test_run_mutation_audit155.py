"""Audit 155: tests that kill the mutants of a hand-made mutation audit of ``mnistlab/training/run.py`` (what
``train()`` does around the fit loop) that no other test caught: the paths config.toml stores, summary.json's
entries, the resume command and the messages after an interrupt or a failed report, and the warnings of a run.
Each expected value is worked out by hand from the docstrings and the README, not read back from the code."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from mnistlab import Config, apply_overrides, train
from mnistlab.training import run as run_module
from test_resume import InterruptAt


def tiny_cfg(mnist_root, *extra: str) -> Config:
    return apply_overrides(Config(), [f"data.dir={mnist_root}", "data.val_size=200", "data.train_limit=400",
                                      "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
                                      "train.batch_size=100", "train.epochs=1", "train.progress=false",
                                      "train.threads=1", "tensorboard.enabled=false", "model.name=cnn",
                                      "model.width=0.25", "train.report=false", *extra])


# --- the stored config ---------------------------------------------------------------------------------------------

def test_a_data_folder_under_home_stays_under_home_in_the_stored_config(monkeypatch, tmp_path):
    # "~/mnist" is each user's own folder: made absolute from the current folder it became <cwd>/~/mnist, a folder
    # named "~" that a resumed run (or anyone reading config.toml) would look in
    import os

    monkeypatch.chdir(tmp_path)
    cfg = run_module._absolute_paths(apply_overrides(Config(), ["data.dir=~/mnist", "finetune.init_from=w/a.ckpt"]))
    assert os.path.expanduser(cfg.data.dir) == os.path.expanduser("~/mnist")
    assert cfg.finetune.init_from == str(tmp_path / "w" / "a.ckpt")


# --- warnings of a run ------------------------------------------------------------------------------------------

def test_max_steps_equal_to_the_epochs_steps_is_not_warned_about(mnist_root, tmp_path, capsys):
    # 400 training images in batches of 100: 4 steps in the one epoch; max_steps = 4 ends the run exactly there,
    # it is not "more than the 4 steps"
    # train.threads unset: the run computes in PyTorch's own thread count, which summary.json's threads is
    cfg = tiny_cfg(mnist_root, "train.max_steps=4")
    cfg = replace(cfg, train=replace(cfg.train, threads=None))
    result = train(cfg, out=tmp_path / "run", quiet=True)
    assert result.summary["steps"] == 4 and result.summary["threads"] == torch.get_num_threads()
    assert (result.summary["train_images"], result.summary["val_images"]) == (400, 200)
    assert "train.max_steps" not in capsys.readouterr().err


# --- messages -------------------------------------------------------------------------------------------------

def test_a_failed_report_s_retry_command_quotes_the_folder(mnist_root, tmp_path, monkeypatch, capsys):
    # The advice is a command to paste: `mnistlab report /x/my runs/a` is two arguments, and the report command
    # refused the first (the resume command and the final line already quote the folder)
    import shlex

    import mnistlab.report

    def broken(*args, **kwargs):
        raise RuntimeError("no plots today")

    monkeypatch.setattr(mnistlab.report, "write_run_report", broken)
    out = tmp_path / "my runs" / "a"
    train(tiny_cfg(mnist_root, "train.report=true", "train.max_steps=1"), out=out, quiet=True)
    err = capsys.readouterr().err
    assert "could not write the report (RuntimeError: no plots today)" in err
    command = err.split("retry with `")[1].split("`")[0]
    assert shlex.split(command) == ["mnistlab", "report", str(out)]


def test_one_validation_image_is_enough_to_train(mnist_root, tmp_path):
    # val_size = 0 is refused (nothing to choose the best epoch on); 1 image is a validation split
    result = train(tiny_cfg(mnist_root, "data.val_size=1", "train.max_steps=1"), out=tmp_path / "run", quiet=True)
    assert result.summary["val_images"] == 1 and result.summary["steps"] == 1


@pytest.mark.parametrize("local, nproc", [(None, 4), ("4", 4), ("2", 1)])
def test_the_resume_command_names_the_processes_only_when_all_ran_on_this_machine(monkeypatch, local, nproc):
    # 4 processes in all; LOCAL_WORLD_SIZE = 2: two machines of 2, each started by hand, where `--nproc 4` would
    # start all four on one
    from mnistlab.training import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert run_module._processes_here() == nproc


def test_an_interrupted_run_s_summary_counts_its_finished_epochs_and_says_how_to_resume(mnist_root, tmp_path):
    import shlex

    from mnistlab.training import TrainingInterrupted

    # 4 steps an epoch: step 6 is inside epoch 2, after epoch 1 finished
    out = tmp_path / "my runs" / "cut"
    with pytest.raises(TrainingInterrupted) as caught:
        train(tiny_cfg(mnist_root, "train.epochs=2"), out=out, quiet=True, callbacks=[InterruptAt(6)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "interrupted" and summary["epochs"] == 1
    command = f"mnistlab train --resume {shlex.quote(str(out))}"
    assert summary["resume_with"] == command
    assert str(caught.value).endswith(f"\nresume with: {command}")
    assert shlex.split(command)[-1] == str(out)



def test_a_run_resumed_in_fp32_after_fp16_skipped_steps_still_reports_them(mnist_root, tmp_path, monkeypatch):
    # summary.json's skipped_steps is there "also in a run resumed in another precision after fp16 skipped some":
    # the steps fp16 skipped in the first part did not train, whatever the second part ran in
    import sys

    fit = sys.modules["mnistlab.training.fit"]
    # a loss scale of 2**24 overflows in the first steps, as fp16's scale does before it comes down to fit
    monkeypatch.setattr(fit, "grad_scaler", lambda device: torch.amp.GradScaler(device.type, init_scale=2.0**24))
    cfg = tiny_cfg(mnist_root, "train.precision=fp16", "schedule.name=constant")
    first = train(cfg, out=tmp_path / "run", quiet=True)
    skipped = first.summary["skipped_steps"]
    assert skipped >= 1
    resumed = train(apply_overrides(cfg, ["train.epochs=2", "train.precision=fp32"]), resume=tmp_path / "run",
                    quiet=True)
    assert resumed.summary["precision"] == "fp32" and resumed.summary["skipped_steps"] == skipped


def test_a_run_that_writes_its_report_does_not_say_the_report_is_left_out_of_date(mnist_root, tmp_path, capsys):
    # "report.html is not brought up to date" is for train.report = false with a report.html of an earlier part;
    # a resumed run that writes the report (here the fixture's stand-in) brings it up to date
    out = tmp_path / "run"
    cfg = tiny_cfg(mnist_root, "train.max_steps=1")
    train(cfg, out=out, quiet=True)
    (out / "report.html").write_text("the first part's")
    train(apply_overrides(cfg, ["train.report=true", "train.max_steps=2"]), resume=out)
    assert "not brought up to date" not in capsys.readouterr().out


def test_more_epochs_under_the_same_max_steps_do_not_warn_that_the_schedule_moves(mnist_root, tmp_path, capsys):
    # one-cycle is planned over min(epochs x 4 steps, max_steps): 2 steps before and after the change, the same
    # curve, so there is nothing to warn about
    cfg = tiny_cfg(mnist_root, "schedule.name=onecycle", "train.max_steps=2")
    train(cfg, out=tmp_path / "run", quiet=True)
    capsys.readouterr()
    train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "run", quiet=True)
    assert "schedule is planned over" not in capsys.readouterr().err


def test_the_callbacks_message_handler_leaves_the_logger_level_as_it_found_it():
    # a notebook's own logging set up after a run got mnistlab's INFO lines that the level it had kept out
    import logging

    log = logging.getLogger("mnistlab")
    before = log.level
    with run_module.callback_messages(True, always=True):
        assert log.level == logging.INFO
    assert log.level == before
