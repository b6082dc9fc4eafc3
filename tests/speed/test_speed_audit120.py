"""Audit 120 of the range test and the speed tools: settings that failed only after minutes of `mnistlab bench`
runs, and range-test settings the test could not apply as asked."""

from __future__ import annotations

import json

import pytest

from mnistlab import Config, apply_overrides
from mnistlab.cli import main
from mnistlab.errors import ConfigError
from mnistlab.training.lr_find import check_settings, lr_range_test

TINY_BENCH = ["--train-limit", "64", "--steps", "1", "--rounds", "1", "--set", "train.epochs=1",
              "--set", "train.threads=1"]


def _no_runs(monkeypatch):
    """Any timed run of bench fails the test: the settings must be refused before the first one."""
    from mnistlab import bench

    def ran(*args, **kwargs):
        raise AssertionError("a run started before the settings were checked")

    monkeypatch.setattr(bench, "public_recipe", ran)
    monkeypatch.setattr(bench, "time_to_accuracy", ran)
    monkeypatch.setattr(bench, "roofline", ran)


def test_bench_refuses_seeds_past_the_last_seed_before_the_first_run(mnist_root, monkeypatch, capsys):
    # train.seed 2**32 - 1 with --seeds 2: the first seed's public recipe and training ran, then the second's
    # seed was refused
    _no_runs(monkeypatch)
    code = main(["bench", "--data-dir", str(mnist_root), *TINY_BENCH, "--models", "cnn",
                 "--set", f"train.seed={2**32 - 1}", "--seeds", "2"])
    err = capsys.readouterr().err
    assert code != 0
    assert "2 seeds from train.seed 4294967295 go up to 4294967296" in err and "below 2**32" in err
    assert "Traceback" not in err


def test_bench_refuses_a_training_rate_run_its_trainer_refuses_before_the_first_run(mnist_root, monkeypatch,
                                                                                     capsys):
    # The default recipe (fast, no batch norm) trains at batch 1; resnet18's batch norm cannot: refused only once
    # the time-to-accuracy runs were done
    _no_runs(monkeypatch)
    code = main(["bench", "--data-dir", str(mnist_root), *TINY_BENCH, "--models", "resnet18",
                 "--set", "train.batch_size=1"])
    err = capsys.readouterr().err
    assert code != 0
    assert "the training-rate run of resnet18: train.batch_size 1 leaves batch norm one image" in err
    assert "Traceback" not in err


def test_bench_still_runs_the_training_rate_models_it_checked(mnist_root, monkeypatch, capsys):
    # The checks build a trainer per model on two synthetic images; the table is still made of real runs
    from mnistlab import bench
    from tiny_bench import first_test_images, small_matmuls

    small_matmuls(monkeypatch)
    first_test_images(monkeypatch, 200)
    assert main(["bench", "--data-dir", str(mnist_root), *TINY_BENCH, "--models", "lenet",
                 "--set", "train.batch_size=32"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("lenet "))
    assert row[2] == "32" and row[3] == "fp32" and int(row[4]) > 0


def test_the_range_test_stops_before_a_rate_float32_weights_cannot_take(mnist_small):
    # The trainer applies a rate above float32's largest as inf: --max-lr 1e300 recorded lr inf (null in --json)
    # for a step planned at 2e99, and the lowest average's rate came out null
    cfg = apply_overrides(Config(), ["train.batch_size=32", "train.progress=false", "train.threads=1",
                                     "model.width=0.25", "optimizer.name=sgd"])
    r = lr_range_test(cfg, data=mnist_small, min_lr=1e-5, max_lr=1e300, steps=4, diverge=1e300)
    # rates 1e-5, 4.6e96, ...: the second is beyond float32 (it ran at inf, and the loss after it was NaN)
    assert r.stop_reason == ("the next rate, 4.64e+96 (step 2 of 4), is above float32's largest number "
                             "(3.40e+38), which the weights cannot take"), r.stop_reason
    assert r.lrs == [pytest.approx(1e-5, rel=1e-9)]
    assert r.lowest in r.lrs
    json.dumps(r.to_dict(), allow_nan=False)  # no inf to write as null


def test_a_min_lr_above_float32_is_refused_before_reading_data(tmp_path, capsys):
    # no step could run at it
    with pytest.raises(ConfigError, match=r"min_lr must be at most 3.4e\+38"):
        check_settings(1e39, 1e40, 100)
    check_settings(3.4e38, 1e40, 100)  # the largest float32 is a rate the step can apply
    code = main(["lr-find", "--data-dir", str(tmp_path / "nothing"), "--min-lr", "1e39", "--max-lr", "1e40",
                 "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code != 0 and "min_lr must be at most" in err and "Traceback" not in err
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("steps", [50.0, 20.5, True])
def test_the_range_test_refuses_steps_that_are_not_whole_numbers(steps):
    # 50.0 passed the range check and failed after the data was read, as range()'s TypeError
    with pytest.raises(ConfigError, match="whole number"):
        lr_range_test(Config(), steps=steps)  # before any data is read


def test_the_range_test_takes_numpy_whole_numbers(mnist_small):
    import numpy as np

    check_settings(1e-5, 1.0, np.int64(20))
    cfg = apply_overrides(Config(), ["train.batch_size=32", "train.progress=false", "train.threads=1",
                                     "model.width=0.25"])
    r = lr_range_test(cfg, data=mnist_small, min_lr=1e-5, max_lr=1e-4, steps=np.int64(3))
    assert len(r.lrs) == 3


class _Stop(Exception):
    pass


def test_the_checks_before_the_runs_leave_the_allocator_to_the_config(mnist_root, monkeypatch):
    # The training-rate runs' trainers, built to check them, must not set malloc for the whole process before a
    # public recipe and runs whose config has train.reuse_memory off
    import importlib

    from mnistlab import bench

    fit = importlib.import_module("mnistlab.training.fit")  # the module: mnistlab.training.fit is also a function

    calls = []
    monkeypatch.setattr(fit, "reuse_freed_memory", lambda: calls.append("allocator"))
    monkeypatch.setattr(bench, "reuse_freed_memory", lambda: calls.append("allocator"))

    def recipe(*args, **kwargs):
        calls.append("recipe")
        raise _Stop()

    monkeypatch.setattr(bench, "public_recipe", recipe)
    cfg = apply_overrides(Config(), {"data.dir": str(mnist_root), "train.reuse_memory": False, "train.threads": 1})
    with pytest.raises(_Stop):
        bench.run_bench(cfg, models=["cnn", "resnet18"], steps=1, train_limit=64, out=lambda line: None)
    assert calls == ["recipe"]
