"""History: metrics.csv, rewritten whole after every epoch."""

import csv

from fake_trainer import FakeTrainer, drive, epochs, roundtrip
from mnistlab.callbacks import CallbackList, History

ROWS = epochs(val_loss=[0.9, 0.8, 0.7, 0.6], val_accuracy=[0.1, 0.2, 0.3, 0.4])


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_row_per_epoch(trainer, tmp_path):
    h = History()
    drive([h], ROWS[:3], trainer)
    table = read(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in table] == ["1", "2", "3"]
    assert list(table[0]) == list(h.rows[0])  # header: the first epoch's keys
    assert float(table[2]["val_loss"]) == 0.7  # full precision
    assert [r["epoch"] for r in h.rows] == [1, 2, 3]


def test_resume_rewrites_without_duplicates(tmp_path):
    first = FakeTrainer(run_dir=tmp_path)
    h = History()
    drive([h], ROWS[:2], first)
    state = roundtrip(CallbackList([h]).state_dict())  # the checkpoint after epoch 2
    drive([h], ROWS[:3], FakeTrainer(run_dir=tmp_path))  # epoch 3 reached the file, not the checkpoint
    assert len(read(tmp_path / "metrics.csv")) == 3

    resumed = FakeTrainer(run_dir=tmp_path)
    resumed.epoch = 2
    h2 = History()
    drive([h2], ROWS[2:], resumed, state=state)
    table = read(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in table] == ["1", "2", "3", "4"]
    assert [float(r["val_loss"]) for r in table] == [0.9, 0.8, 0.7, 0.6]
    assert not list(tmp_path.glob(".*tmp*"))


def test_without_a_run_folder_only_rows():
    h = History()
    drive([h], ROWS, FakeTrainer(run_dir=None))
    assert len(h.rows) == 4


def test_a_rank_other_than_0_keeps_the_rows_and_writes_no_file(tmp_path):
    # Under torchrun every rank runs a user's History(path=...); all of them rewrote the one file.
    h = History(path=tmp_path / "mine.csv")
    drive([h], ROWS[:2], FakeTrainer(run_dir=None, is_main=False))
    assert [r["epoch"] for r in h.rows] == [1, 2]
    assert list(tmp_path.iterdir()) == []
