"""Audit 108 of the callbacks: settings the Python API took silently, a shared checkpoint folder, a false warning."""

from __future__ import annotations

import logging

import pytest

from fake_trainer import FakeTrainer, drive, epochs
from mnistlab.callbacks import GL, PQ, UP, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from mnistlab.errors import ConfigError

NAN = float("nan")


@pytest.mark.parametrize("make, message", [
    # GL > nan never holds: the rule never stopped.
    (lambda: GL(alpha=NAN), "GL: alpha must be a finite number"),
    (lambda: PQ(alpha=NAN), "PQ: alpha must be a finite number"),
    # No epoch beats a NaN threshold: the rate was cut every `patience` epochs while val_loss fell.
    (lambda: ReduceLROnPlateau(threshold=NAN), "ReduceLROnPlateau: threshold must be a finite number"),
    (lambda: EarlyStopping(baseline=NAN), r"EarlyStopping: baseline must be a finite number \(or None\)"),
    (lambda: EarlyStopping(divergence_threshold=NAN), "EarlyStopping: divergence_threshold must be a finite"),
    (lambda: EarlyStopping(min_delta="0.1"), "EarlyStopping: min_delta must be a finite number, got '0.1'"),
    # Whole numbers were truncated: patience 2.7 waited 2 epochs.
    (lambda: EarlyStopping(patience=2.7), "EarlyStopping: patience must be a whole number, got 2.7"),
    (lambda: UP(strips=2.5), "UP: strips must be a whole number"),
    (lambda: PQ(strip=2.5), "PQ: strip must be a whole number"),
    (lambda: GL(start_epoch=NAN), "GL: start_epoch must be a whole number"),
    (lambda: ReduceLROnPlateau(cooldown=1.5), "ReduceLROnPlateau: cooldown must be a whole number"),
    (lambda: ModelCheckpoint(save_top_k=1.5), "ModelCheckpoint: save_top_k must be a whole number"),
])
def test_the_api_refuses_settings_the_config_refuses(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_whole_and_integer_settings_still_work():
    assert EarlyStopping(patience=3.0, baseline=1).patience == 3
    assert UP(strips=2, strip=4.0).strip == 4
    # The refused NaN threshold, had it been taken: a falling val_loss cut the rate at every epoch.
    trainer = FakeTrainer(lr=1.0)
    drive([ReduceLROnPlateau(patience=1, threshold=1e-4, factor=0.5)], epochs(val_loss=[1.0, 0.5, 0.4, 0.3]), trainer)
    assert trainer.lrs_set == []


def test_a_dirpath_two_runs_share_keeps_the_first_runs_files(tmp_path):
    folder = tmp_path / "ckpts"

    def run(losses):
        cb = ModelCheckpoint(dirpath=folder, monitor="val_loss", save_best_as=None, save_top_k=1,
                             filename="epoch{epoch:03d}.ckpt")
        drive([cb], epochs(val_loss=losses), FakeTrainer(run_dir=tmp_path / "run"))
        return [file for _, _, file in cb.kept]

    assert run([0.5, 0.4]) == [str(folder / "epoch002.ckpt")]
    # The second run's epoch 2 overwrote the first run's epoch002.ckpt, and its epoch 3 then deleted it as its own.
    assert run([0.3, 0.2, 0.1]) == [str(folder / "epoch003.ckpt")]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch002.ckpt", "epoch003.ckpt"]


def test_in_the_run_folder_a_resumed_run_writes_again_the_file_of_an_epoch_a_kill_came_after(tmp_path):
    # Killed after epoch 2's top-k file was written but before its last.ckpt: the resume (from epoch 1's state)
    # names epoch 2's file as the uninterrupted run did, not epoch002-v1.ckpt beside an orphan.
    (tmp_path / "epoch002.ckpt").write_text("epoch 2\n")
    cb = ModelCheckpoint(monitor="val_loss", filename="epoch{epoch:03d}.ckpt")
    trainer = FakeTrainer(run_dir=tmp_path)
    trainer.epoch = 1
    state = {"ModelCheckpoint": {"best_value": 0.5, "best_epoch": 1, "kept": [[0.5, 1, "epoch001.ckpt"]],
                                 "periodic": [], "monitor": "val_loss", "mode": "min"}}
    drive([cb], epochs(val_loss=[0.4]), trainer, state=state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "epoch002.ckpt"]


def test_a_rank_other_than_0_names_files_as_it_would_without_looking_at_the_disk(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "epoch001.ckpt").write_text("another run's\n")
    cb = ModelCheckpoint(dirpath=folder, monitor="val_loss", save_best_as=None, filename="epoch{epoch:03d}.ckpt")
    drive([cb], epochs(val_loss=[0.5]), FakeTrainer(is_main=False))
    assert [file for _, _, file in cb.kept] == [str(folder / "epoch001.ckpt")]
    assert (folder / "epoch001.ckpt").read_text() == "another run's\n"


def test_no_restore_warning_says_why_when_the_run_ended_before_start_epoch(caplog):
    cb = EarlyStopping(start_epoch=5, restore_best_weights=True)
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        drive([cb], epochs(val_loss=[1.0, 0.5]), FakeTrainer())
    assert "the run ended after epoch 2, before start_epoch 5" in caplog.text
    assert "no epoch had a finite value" not in caplog.text
    caplog.clear()
    cb = EarlyStopping(stop_on_nonfinite=False, restore_best_weights=True)
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        drive([cb], epochs(val_loss=[NAN, NAN]), FakeTrainer())
    assert "no epoch had a finite value" in caplog.text
