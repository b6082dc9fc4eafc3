"""benchmarks/best_preset.py's table of existing runs: the numbers the README's accuracy rows quote."""

from __future__ import annotations

import json

import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def best_preset():
    return load_benchmark("best_preset")


def test_a_row_takes_the_ema_validation_numbers_of_the_epoch_ema_ckpt_came_from(best_preset, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({
        "test_accuracy": 0.9962, "ema_test_accuracy": 0.9965, "ema_tta_test_accuracy": 0.9968, "best_epoch": 3,
        "ema_best_epoch": 2, "epochs": 3, "train_seconds": 1147.2, "precision": "bf16"}))
    (tmp_path / "metrics.csv").write_text("epoch,val_accuracy,ema_val_accuracy,ema_val_loss\n"
                                          "1,0.99,0.9910,0.530011\n2,0.99,0.9964,0.511234\n3,0.99,0.9970,0.510001\n")
    row = best_preset._row(7, tmp_path)
    # epoch 2's, not the last or the best one: the numbers a rule on the validation split compares
    assert (row["EMA val %"], row["EMA val loss"]) == (99.64, 0.51123)
    assert row == {"seed": 7, "test %": 99.62, "EMA %": 99.65, "EMA+TTA %": 99.68, "EMA val %": 99.64,
                   "EMA val loss": 0.51123, "best epoch": 3, "EMA epoch": 2, "epochs": 3, "train min": 19.12,
                   "precision": "bf16"}
