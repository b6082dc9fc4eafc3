"""ModelCheckpoint: best.ckpt, the top k files and periodic files."""

from pathlib import Path

import pytest

from fake_trainer import FakeTrainer, drive, epochs, roundtrip
from mnistlab.callbacks import CallbackList, ModelCheckpoint
from mnistlab.errors import ConfigError


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_best_and_top_k(trainer, tmp_path):
    # val_accuracy 0.5, 0.7, 0.6, 0.8, 0.65 with k = 2:
    # t1 keep {1}; t2 keep {2, 1}; t3 0.6 > 0.5 -> keep {2, 3}, delete 1; t4 keep {4, 2}, delete 3;
    # t5 0.65 < 0.7 (the worst kept) -> not written.
    cb = ModelCheckpoint(save_top_k=2)
    drive([cb], epochs(val_accuracy=[0.5, 0.7, 0.6, 0.8, 0.65]), trainer)
    assert files(tmp_path) == ["best.ckpt", "epoch002-0.7000.ckpt", "epoch004-0.8000.ckpt"]
    assert (tmp_path / "best.ckpt").read_text() == "epoch 4\n"
    assert cb.best_epoch == 4 and cb.best_value == 0.8
    assert [(v, e) for v, e, _ in cb.kept] == [(0.8, 4), (0.7, 2)]


def test_min_mode_and_template_with_other_metric(trainer, tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=1, filename="e{epoch}-loss{val_loss:.2f}.ckpt")
    drive([cb], epochs(val_loss=[0.5, 0.3, 0.4]), trainer)
    assert files(tmp_path) == ["best.ckpt", "e2-loss0.30.ckpt"]
    assert (tmp_path / "best.ckpt").read_text() == "epoch 2\n"


def test_periodic_files_are_never_deleted(trainer, tmp_path):
    # k = 1, every 2 epochs. t1 top {1}; t2 periodic 2 and top {2} (one file), delete 1;
    # t3 top {3}; 2 stays as periodic; t4 periodic 4 (0.6 is not top).
    cb = ModelCheckpoint(save_top_k=1, every_n_epochs=2)
    drive([cb], epochs(val_accuracy=[0.5, 0.7, 0.9, 0.6]), trainer)
    assert files(tmp_path) == ["best.ckpt", "epoch002-0.7000.ckpt", "epoch003-0.9000.ckpt", "epoch004-0.6000.ckpt"]


def test_top_k_zero_writes_only_best(trainer, tmp_path):
    drive([ModelCheckpoint(save_top_k=0)], epochs(val_accuracy=[0.5, 0.7]), trainer)
    assert files(tmp_path) == ["best.ckpt"]


def test_ties_keep_the_earlier_epoch(trainer, tmp_path):
    drive([ModelCheckpoint(save_top_k=1)], epochs(val_accuracy=[0.7, 0.7]), trainer)
    assert files(tmp_path) == ["best.ckpt", "epoch001-0.7000.ckpt"]
    assert (tmp_path / "best.ckpt").read_text() == "epoch 1\n"


def test_nan_is_never_best(trainer, tmp_path):
    drive([ModelCheckpoint(save_top_k=2)], epochs(val_accuracy=[float("nan"), 0.5]), trainer)
    assert files(tmp_path) == ["best.ckpt", "epoch002-0.5000.ckpt"]


def test_a_rank_other_than_0_chooses_as_rank_0_and_writes_or_deletes_nothing(tmp_path, monkeypatch):
    # Under torchrun every rank runs a user's ModelCheckpoint. The ranks other than 0 have no run folder: they
    # failed at the start ("nowhere to write"); given an absolute dirpath they wrote and deleted rank 0's files.
    rows = epochs(val_accuracy=[0.5, 0.7, 0.6])
    rank0 = [ModelCheckpoint(dirpath="top", save_top_k=1), ModelCheckpoint(dirpath=tmp_path / "shared")]
    drive(rank0, rows, FakeTrainer(run_dir=tmp_path / "run"))
    kept = files(tmp_path / "shared")  # best.ckpt and epoch002's
    (tmp_path / "shared" / "epoch001-0.5000.ckpt").write_text("rank 0's\n")  # one rank 1 would drop at epoch 2
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    other = FakeTrainer(run_dir=None, is_main=False)
    rank1 = [ModelCheckpoint(dirpath="top", save_top_k=1), ModelCheckpoint(dirpath=tmp_path / "shared")]
    drive(rank1, rows, other)
    assert other.saved == [] and list((tmp_path / "cwd").iterdir()) == []
    assert files(tmp_path / "shared") == sorted(kept + ["epoch001-0.5000.ckpt"])
    assert CallbackList(rank1).state_dict() == CallbackList(rank0).state_dict()  # the same choices


def test_dirpath(trainer, tmp_path):
    (tmp_path / "ckpts").mkdir()
    drive([ModelCheckpoint(dirpath=tmp_path / "ckpts")], epochs(val_accuracy=[0.5]), trainer)
    assert files(tmp_path / "ckpts") == ["best.ckpt", "epoch001-0.5000.ckpt"]


def test_resume_continues_the_top_k_and_a_smaller_k_prunes(tmp_path):
    rows = epochs(val_accuracy=[0.5, 0.7, 0.6, 0.8])
    cb = ModelCheckpoint(save_top_k=3)
    first = FakeTrainer(run_dir=tmp_path)
    drive([cb], rows[:3], first)
    assert files(tmp_path) == ["best.ckpt", "epoch001-0.5000.ckpt", "epoch002-0.7000.ckpt", "epoch003-0.6000.ckpt"]
    state = roundtrip(CallbackList([cb]).state_dict())

    # Resumed with save_top_k = 2 (the new setting wins): after epoch 4 the two best are 4 and 2.
    resumed = FakeTrainer(run_dir=tmp_path)
    resumed.epoch = 3
    cb2 = ModelCheckpoint(save_top_k=2)
    drive([cb2], rows[3:], resumed, state=state)
    assert files(tmp_path) == ["best.ckpt", "epoch002-0.7000.ckpt", "epoch004-0.8000.ckpt"]
    assert cb2.best_epoch == 4


def test_bad_template_is_reported_at_construction():
    with pytest.raises(ConfigError, match="unknown field.*val_acc.*valid fields: epoch"):
        ModelCheckpoint(filename="{epoch}-{val_acc:.2f}.ckpt")


def test_a_run_folder_given_relative_is_found_when_resumed_from_another_folder(tmp_path, monkeypatch):
    # The run was made as `--out run` from tmp_path and is resumed as `--resume ../run` from tmp_path/sub:
    # the file that falls out of the top 1 must be deleted there, not looked for relative to the new folder.
    (tmp_path / "run").mkdir()
    (tmp_path / "sub").mkdir()
    rows = epochs(val_accuracy=[0.5, 0.7])
    monkeypatch.chdir(tmp_path)
    cb = ModelCheckpoint(save_top_k=1)
    drive([cb], rows[:1], FakeTrainer(run_dir=Path("run")))
    state = roundtrip(CallbackList([cb]).state_dict())

    monkeypatch.chdir(tmp_path / "sub")
    resumed = FakeTrainer(run_dir=Path("../run"))
    resumed.epoch = 1
    drive([ModelCheckpoint(save_top_k=1)], rows[1:], resumed, state=state)
    assert files(tmp_path / "run") == ["best.ckpt", "epoch002-0.7000.ckpt"]


def test_a_state_that_recorded_paths_with_the_run_folder_still_prunes_its_files(tmp_path):
    # Checkpoints written before files were recorded by name hold "<run folder>/<name>".
    (tmp_path / "epoch001-0.5000.ckpt").write_text("epoch 1\n")
    old = {"best_value": 0.5, "best_epoch": 1, "kept": [[0.5, 1, "runs/moved-away/epoch001-0.5000.ckpt"]],
           "periodic": []}
    resumed = FakeTrainer(run_dir=tmp_path)
    resumed.epoch = 1
    drive([ModelCheckpoint(save_top_k=1)], epochs(val_accuracy=[0.7]), resumed, state={"ModelCheckpoint": old})
    assert files(tmp_path) == ["best.ckpt", "epoch002-0.7000.ckpt"]


def test_a_new_monitor_on_resume_ranks_afresh(tmp_path):
    # Ranked by val_accuracy (best 0.9) and resumed ranking by val_loss (mode min): comparing a loss of 0.3
    # with the stored 0.9 would call it better only by accident of the numbers; the best starts afresh.
    cb = ModelCheckpoint(save_top_k=1)
    drive([cb], epochs(val_accuracy=[0.9]), FakeTrainer(run_dir=tmp_path))
    state = roundtrip(CallbackList([cb]).state_dict())
    resumed = FakeTrainer(run_dir=tmp_path)
    resumed.epoch = 1
    cb2 = ModelCheckpoint(monitor="val_loss", save_top_k=1, filename="e{epoch}-loss{val_loss:.2f}.ckpt")
    drive([cb2], epochs(val_loss=[2.0, 3.0]), resumed, state=state)
    assert (cb2.best_value, cb2.best_epoch) == (2.0, 2)
    assert [(v, e) for v, e, _ in cb2.kept] == [(2.0, 2)]
    # The old top-k file is no longer ranked and stays; the new one is kept.
    assert files(tmp_path) == ["best.ckpt", "e2-loss2.00.ckpt", "epoch001-0.9000.ckpt"]


def test_files_ranked_by_the_old_monitor_are_never_overwritten_after_a_new_one(tmp_path):
    # A template without {epoch} gives the new monitor's epochs the old files' names: they must get -v1, ...,
    # not replace the files the old ranking kept (which were no longer counted as taken).
    cb = ModelCheckpoint(save_top_k=2, filename="top.ckpt")
    drive([cb], epochs(val_accuracy=[0.8, 0.9]), FakeTrainer(run_dir=tmp_path))
    assert files(tmp_path) == ["best.ckpt", "top-v1.ckpt", "top.ckpt"]
    state = roundtrip(CallbackList([cb]).state_dict())
    resumed = FakeTrainer(run_dir=tmp_path)
    resumed.epoch = 2
    cb2 = ModelCheckpoint(monitor="val_loss", save_top_k=1, filename="top.ckpt")
    drive([cb2], epochs(val_loss=[0.5, 0.4]), resumed, state=state)
    assert (tmp_path / "top.ckpt").read_text() == "epoch 1\n"
    assert (tmp_path / "top-v1.ckpt").read_text() == "epoch 2\n"
    # epoch 3 went to top-v2, then epoch 4 (better) to top-v3 and top-v2 was pruned as out of the top 1
    assert files(tmp_path) == ["best.ckpt", "top-v1.ckpt", "top-v3.ckpt", "top.ckpt"]
    assert (tmp_path / "top-v3.ckpt").read_text() == "epoch 4\n"


def test_a_template_without_epoch_keeps_each_epoch_in_its_own_file(trainer, tmp_path):
    # Both epochs fill "acc0.95.ckpt": the second gets -v1 instead of overwriting the better first one.
    cb = ModelCheckpoint(save_top_k=2, filename="acc{val_accuracy:.2f}.ckpt")
    drive([cb], epochs(val_accuracy=[0.90, 0.951, 0.949]), trainer)
    assert files(tmp_path) == ["acc0.95-v1.ckpt", "acc0.95.ckpt", "best.ckpt"]
    assert (tmp_path / "acc0.95.ckpt").read_text() == "epoch 2\n"
    assert (tmp_path / "acc0.95-v1.ckpt").read_text() == "epoch 3\n"
    assert [(e, f) for _, e, f in cb.kept] == [(2, "acc0.95.ckpt"), (3, "acc0.95-v1.ckpt")]


def test_a_template_naming_a_file_of_the_run_never_replaces_it(trainer, tmp_path):
    # From the API (the config refuses these names): best.ckpt stays the best epoch's.
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=0, every_n_epochs=1, filename="best.ckpt")
    drive([cb], epochs(val_loss=[0.9, 0.8, 0.85]), trainer)
    assert (tmp_path / "best.ckpt").read_text() == "epoch 2\n"
    assert files(tmp_path) == ["best-v1.ckpt", "best-v2.ckpt", "best-v3.ckpt", "best.ckpt"]


@pytest.mark.parametrize("name", ["best.ckpt", "last.ckpt", "ema.ckpt", "metrics.csv"])
def test_the_config_refuses_a_template_that_names_a_file_of_the_run(name):
    from mnistlab.config import Config, apply_overrides

    with pytest.raises(ConfigError, match=f"checkpoint.filename = '{name}' is the name of a file or folder the run itself"):
        apply_overrides(Config(), [f"checkpoint.filename={name}"])


def test_a_runaway_metric_is_cut_to_a_name_a_file_system_takes(trainer, tmp_path):
    # "{val_loss:.4f}" of a loss of 1e250 is a 256-character name: the write failed and stopped the run.
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=1, filename="e{epoch}-{val_loss:.4f}.ckpt")
    drive([cb], epochs(val_loss=[1e250]), trainer)
    (name,) = [f for f in files(tmp_path) if f != "best.ckpt"]
    assert len(name.encode()) == 200 and name.startswith("e1-99999999") and name.endswith(".ckpt")


@pytest.mark.parametrize("name", ["a\x00{epoch}.ckpt", "e{epoch:c}.ckpt", "{val_loss}" * 15])
def test_the_api_refuses_names_no_file_can_have(name):
    with pytest.raises(ConfigError, match="checkpoint.filename"):
        ModelCheckpoint(filename=name)
