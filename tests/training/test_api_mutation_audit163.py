"""Audit 163: mutation testing of the Python API's fit() (mnistlab/training/__init__.py: its argument checks,
run_dir's ~ and the folder made for a refused run, the settings warnings, the order of the config's steering
callbacks and the caller's, what a refused call puts back in the model, the caller's own frozen parameters,
the Ctrl-C message with a run folder) and of mnistlab/data/__init__.py's load_data/load_test checks.

Each test names in a comment the hand-made mutant of the source it kills.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from mnistlab import Callback, Config, apply_overrides, build_model, fit
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.training import TrainingInterrupted


def small_cfg(mnist_root, *extra: str) -> Config:
    return apply_overrides(Config(), [f"data.dir={mnist_root}", "data.val_size=500", "data.train_limit=2000",
                                      "data.test_limit=2000", "train.epochs=1", "train.threads=1",
                                      "train.progress=false", "tensorboard.enabled=false", "model.name=cnn",
                                      "model.width=0.25", *extra])


def cnn(data):
    return build_model("cnn", width=0.25, mean=data.mean, std=data.std)


class Halt(Exception):
    """Raised by a callback once fit() has passed its checks: what came before is tested without training."""


class HaltAtStart(Callback):
    def __init__(self):
        self.cfg = None

    def on_train_begin(self, trainer):
        self.cfg = trainer.cfg
        raise Halt


def test_fit_without_a_config_trains_under_the_defaults(mnist_small):
    # mutant: `cfg = Config() if cfg is None else cfg` dropped (None reached check_config_type: a TypeError)
    halt = HaltAtStart()
    with pytest.raises(Halt):
        fit(cnn(mnist_small), mnist_small, callbacks=[halt])
    assert halt.cfg == Config()


def test_a_run_dir_under_home_is_written_there_not_into_a_folder_named_tilde(mnist_small, mnist_root, tmp_path,
                                                                               monkeypatch):
    # mutant: expand_home(run_dir) dropped: "~/runs/a" became a folder named ~ in the current one
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    fit(cnn(mnist_small), mnist_small, small_cfg(mnist_root, "train.max_steps=1"), run_dir="~/runs/a")
    assert (tmp_path / "home" / "runs" / "a" / "last.ckpt").is_file()
    assert not (tmp_path / "cwd" / "~").exists()


def test_an_init_from_that_does_not_fit_leaves_no_run_folder_and_the_model_as_it_was(mnist_small, mnist_root,
                                                                                      one_step_run, tmp_path):
    # mutant: remove_empty(made) dropped where loading finetune.init_from fails: the refused call left the run
    # folder it made (empty) behind
    model = build_model("lenet5", width=0.25, mean=mnist_small.mean, std=mnist_small.std)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = small_cfg(mnist_root, "model.name=lenet5", f"finetune.init_from={one_step_run}")  # a cnn run
    with pytest.raises(CheckpointError, match="holds a 'cnn' model but the config asks for 'lenet5'"):
        fit(model, mnist_small, cfg, run_dir=tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_warns_of_settings_that_will_not_act(mnist_small, mnist_root):
    # mutant: the settings_warnings loop dropped (train() warns of them; fit() said nothing)
    with pytest.warns(UserWarning, match=r"augment.rotation is set, but \[augment\] enabled = false"), \
            pytest.raises(Halt):
        fit(cnn(mnist_small), mnist_small, small_cfg(mnist_root, "augment.rotation=20"), callbacks=[HaltAtStart()])


def test_the_configs_stopping_rule_is_called_before_the_callbacks_given(mnist_small, mnist_root):
    # mutant: callbacks=[*callbacks, *steering] (the docstring: the config's rules are called before the callbacks
    # given, so a callback's on_epoch_end sees the stop early stopping asked for in that epoch)
    seen = []

    class Look(Callback):
        def on_epoch_end(self, epoch, metrics, trainer):
            seen.append(trainer.stop_reason)

    cfg = small_cfg(mnist_root, "train.epochs=3", "schedule.name=constant", "early_stopping.criterion=patience",
                    "early_stopping.patience=1", "early_stopping.min_delta=100")
    result = fit(cnn(mnist_small), mnist_small, cfg, callbacks=[Look()])
    assert result.stopped_by == "early_stopping" and result.epochs == 2
    assert seen[0] is None and seen[-1] == result.stop_reason


def test_a_refused_call_turns_gradient_checkpointing_off_again(mnist_small, mnist_root):
    # mutant: _CallersModel.all_back no longer puts grad_checkpointing back (train.grad_checkpoint switched it on
    # before finetune.freeze ["*"] was refused, and the caller's model kept recomputing its activations)
    model = cnn(mnist_small)
    assert model.grad_checkpointing is False
    with pytest.raises(ConfigError, match="holds every parameter"):
        fit(model, mnist_small, small_cfg(mnist_root, "train.grad_checkpoint=true", 'finetune.freeze=["*"]'))
    assert model.grad_checkpointing is False
    assert all(p.requires_grad for p in model.parameters())


def test_parameters_the_caller_froze_stay_frozen_after_fit(mnist_small, mnist_root):
    # mutant: trainable_back set requires_grad True for every parameter, not the flag each had before the call
    model = cnn(mnist_small)
    frozen = [name for name, _ in model.named_parameters()][:2]
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, mnist_small, small_cfg(mnist_root, "train.max_steps=2"))
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == frozen
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in frozen)  # and they did not train


class CtrlCAfterAStep(Callback):
    """Jupyter's "interrupt kernel" (SIGINT to this process) after the first step."""

    def on_batch_end(self, step, metrics, trainer):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_with_a_run_dir_says_where_progress_was_saved_and_how_to_continue(mnist_small, mnist_root,
                                                                                   tmp_path):
    # mutants: `if e.checkpoint is not None` inverted (the message said the saved progress was only in memory),
    # and e.args left as "SIGINT" (str(e) did not say where it stopped)
    run_dir = tmp_path / "run"
    model = cnn(mnist_small)
    with pytest.raises(TrainingInterrupted) as caught:
        fit(model, mnist_small, small_cfg(mnist_root, "train.epochs=2"), callbacks=[CtrlCAfterAStep()],
            run_dir=run_dir)
    message = str(caught.value)
    assert caught.value.checkpoint is not None and Path(caught.value.checkpoint).is_file()
    assert message.startswith("interrupted by SIGINT at epoch 1")
    assert f"progress saved to {caught.value.checkpoint}; continue with train(cfg, resume={str(run_dir)!r})" in message
    assert "keeps the weights trained so far" not in message
    assert not model.training


def test_load_test_names_itself_in_its_errors(tmp_path):
    # mutant: load_test's checks named load_data ("load_data() takes a DataConfig" for a load_test call)
    from mnistlab.data import load_test

    with pytest.raises(TypeError, match=r"^load_test\(\) takes a DataConfig, got a whole Config: pass its data "
                                        r"section, load_test\(cfg.data\)$"):
        load_test(Config())
    with pytest.raises(TypeError, match=r"^load_test\(\) takes a DataConfig \(cfg.data, or "
                                        r"mnistlab.config.DataConfig\(dataset=...\)\), got dict$"):
        load_test({"dataset": "mnist"})
    with pytest.raises(ConfigError, match=r"load_test\(device\) = 'gpu' is not a device"):
        load_test(Config().data, device="gpu")


def test_a_config_whose_model_cannot_be_built_is_refused_in_fit_s_words(mnist_small, mnist_root, tmp_path):
    # mutant: _config_differs no longer caught config_model's ConfigError: the refusal was build_model's bare
    # message, without "fit(): ... cannot be built" nor how to describe the model in the config
    cfg = small_cfg(mnist_root, "model.stride=30")  # shrinks the 28x28 images below 1x1
    with pytest.raises(ConfigError, match=r"^fit\(\): the config's model \(model.name = 'cnn'\) cannot be built "
                                          r"\(.*\): describe the model in the config"):
        fit(cnn(mnist_small), mnist_small, cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
