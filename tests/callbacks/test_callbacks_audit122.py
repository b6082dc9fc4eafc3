"""Callback states across a resume, and the caller's callbacks beside those the config makes (audit 122)."""

import os
import subprocess
import sys

import pytest

from fake_trainer import FakeTrainer, drive, epochs, roundtrip
from mnistlab.callbacks import CallbackList, EarlyStopping, ModelCheckpoint, build_callbacks
from mnistlab.config import Config, apply_overrides
from mnistlab.errors import ConfigError
from mnistlab.training import train


def patience_cfg(patience: int = 5) -> Config:
    return apply_overrides(Config(), ["early_stopping.criterion=patience", f"early_stopping.patience={patience}"])


def test_a_users_early_stopping_keeps_its_state_when_the_config_turns_its_own_on_at_resume():
    # First part: the user's EarlyStopping alone ([early_stopping] off); val_loss 0.5 then 0.6, one epoch waited.
    trainer = FakeTrainer()
    mine = EarlyStopping(monitor="val_loss", patience=2)
    drive([*build_callbacks(Config(), None), mine], epochs(val_loss=[0.5, 0.6]), trainer)
    state = roundtrip(CallbackList([mine]).state_dict())
    # Resumed with [early_stopping] patience on. Both were stored as "EarlyStopping": the built-in rule took the
    # user's best 0.5, and the user's own started afresh and did not stop after its second epoch without gain.
    builtin, = build_callbacks(patience_cfg(), None)
    mine = EarlyStopping(monitor="val_loss", patience=2)
    assert drive([builtin, mine], epochs(val_loss=[0.7]), trainer, state=state) == 3
    assert trainer.stop_reasons[0].startswith("early stopping: val_loss did not improve")
    assert (mine.best_value, mine.best_epoch, builtin.best_value, builtin.best_epoch) == (0.5, 1, 0.7, 3)


def test_the_configs_early_stopping_state_is_not_loaded_into_a_users_added_at_resume():
    trainer, builtins = FakeTrainer(), build_callbacks(patience_cfg(), None)
    drive(builtins, epochs(val_loss=[0.5, 0.6]), trainer)
    state = roundtrip(CallbackList(builtins).state_dict())
    # Resumed with [early_stopping] off and a rule of the user's: it took the config's best and wait.
    mine = EarlyStopping(monitor="val_loss", patience=1)
    assert drive([mine], epochs(val_loss=[0.55]), trainer, state=state) is None
    assert (mine.best_value, mine.best_epoch, mine.wait) == (0.55, 3, 0)


def test_a_checkpoint_written_before_the_user_keys_still_resumes_the_users_callback():
    state = {"EarlyStopping": {"best_value": 0.5, "best_epoch": 1, "best_weights": None, "stopped_epoch": None,
                               "wait": 1, "monitor": "val_loss", "mode": "min"}}
    trainer = FakeTrainer()
    trainer.epoch = 2
    mine = EarlyStopping(monitor="val_loss", patience=2)
    assert drive([mine], epochs(val_loss=[0.7]), trainer, state=state) == 3


def test_two_user_callbacks_of_one_class_beside_the_configs_each_get_their_own_state():
    first, second = EarlyStopping(monitor="val_loss", patience=9), EarlyStopping(monitor="val_accuracy", patience=9)
    rows = epochs(val_loss=[0.5, 0.6], val_accuracy=[0.7, 0.8])
    drive([*build_callbacks(patience_cfg(), None), first, second], rows, FakeTrainer())
    state = roundtrip(CallbackList([*build_callbacks(patience_cfg(), None), first, second]).state_dict())
    assert {"EarlyStopping", "user:EarlyStopping", "user:EarlyStopping_1"} <= set(state)
    again = [EarlyStopping(monitor="val_loss", patience=9), EarlyStopping(monitor="val_accuracy", patience=9)]
    CallbackList(again).load_state_dict(state)
    assert [(cb.best_value, cb.wait) for cb in again] == [(0.5, 1), (0.8, 0)]


def test_a_users_model_checkpoint_writing_the_runs_own_files_is_refused(tmp_path):
    # It wrote best.ckpt by val_loss over the run's (by val_accuracy), and each deleted the other's top-k files.
    with pytest.raises(ConfigError, match=r"the run's own ModelCheckpoint \(\[checkpoint\], monitor val_accuracy\) "
                                          r"and a ModelCheckpoint \(monitor val_loss\) would both write the best "
                                          r"file 'best.ckpt' and the files named by"):
        CallbackList([*build_callbacks(Config(), tmp_path), ModelCheckpoint(monitor="val_loss")])
    # Apart (another best file and template, or another folder), both keep what they chose.
    mine = ModelCheckpoint(monitor="val_loss", save_best_as="best_loss.ckpt", save_top_k=2,
                           filename="loss{epoch:03d}.ckpt")
    builtin = ModelCheckpoint.from_config(Config().checkpoint)
    rows = epochs(val_accuracy=[0.5, 0.6, 0.7], val_loss=[0.3, 0.4, 0.5])
    drive([builtin, mine], rows, FakeTrainer(run_dir=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "best_loss.ckpt", "epoch003-0.7000.ckpt",
                                                          "loss001.ckpt", "loss002.ckpt"]
    assert (tmp_path / "best_loss.ckpt").read_text() == "epoch 1\n"
    CallbackList([builtin, ModelCheckpoint(dirpath=tmp_path / "other")])


def test_train_refuses_a_clashing_model_checkpoint_before_making_the_folder(mnist_root, tmp_path):
    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=200", "data.val_size=100",
                                     "model.name=cnn", "model.width=0.25", "train.epochs=1", "train.threads=1",
                                     "tensorboard.enabled=false"])
    with pytest.raises(ConfigError, match="would both write the best file 'best.ckpt'"):
        train(cfg, out=tmp_path / "run", callbacks=[ModelCheckpoint(monitor="val_loss")], quiet=True, report=False)
    assert not (tmp_path / "run").exists()


def test_a_dirpaths_temporary_files_left_by_a_killed_run_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "ckpts"
    folder.mkdir()
    killed = [folder / f".epoch002.ckpt.tmp-{dead.pid}", folder / f".best.ckpt.tmp-{dead.pid}"]
    kept = [folder / f".epoch003.ckpt.tmp-{os.getpid()}",  # a live writer's (another run's)
            folder / f".notes.txt.tmp-{dead.pid}", folder / "epoch001.ckpt"]  # not ours
    for file in killed + kept:
        file.write_text("x")
    cb = ModelCheckpoint(dirpath=folder, monitor="val_loss", filename="epoch{epoch:03d}.ckpt")
    cb.on_train_begin(FakeTrainer(run_dir=tmp_path / "run"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in kept)
