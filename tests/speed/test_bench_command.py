"""``mnistlab bench`` and ``run_bench``: interrupted, fed settings that fail late, or called from Python."""

from __future__ import annotations

import os
import signal
import tempfile
import time

import pytest
import torch

from mnistlab import bench
from mnistlab.callbacks.base import Callback
from mnistlab.cli import main
from mnistlab.config import Config, apply_overrides
from tiny_bench import first_test_images, small_matmuls

TINY = ["--train-limit", "256", "--steps", "1", "--rounds", "1", "--models", "cnn", "--set", "train.epochs=1"]


class _Unhandled(Exception):
    """A SIGTERM that reached the test's own handler: the code under test set none (it would have killed pytest)."""


@pytest.fixture(autouse=True)
def sigterm_safety():
    def unhandled(signum, frame):
        raise _Unhandled()

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, previous)


class _SignalAtFirstBatch(Callback):
    def __init__(self, signum: int) -> None:
        self.signum = signum

    def on_batch_end(self, step, metrics, trainer) -> None:
        if step == 1:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_a_training_run_is_one_line_and_leaves_nothing(signum, mnist_root, tmp_path, monkeypatch, capsys,
                                                                   sigterm_safety):
    # The trainer turned it into TrainingInterrupted, which bench let through as a traceback (exit 1), with advice
    # to resume a run folder that was temporary and already gone.
    import mnistlab.training.run as run

    real = run.build_callbacks
    monkeypatch.setattr(run, "build_callbacks", lambda *a, **k: [*real(*a, **k), _SignalAtFirstBatch(signum)])
    monkeypatch.setattr(bench, "public_recipe", lambda data, seed, reuse_memory: {"test_accuracy": 0.9, "train_seconds": 1.0,
                                                                     "precision": "fp32"})
    # torch inductor makes its cache folder (torchinductor_<user>, in tempfile's folder unless
    # TORCHINDUCTOR_CACHE_DIR names one) at its first look-up, which this run can be the one to make: torch's,
    # not bench's, so it goes where it always goes, whether or not an earlier test in this process looked it up.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["bench", "--data-dir", str(mnist_root), *TINY]) == 128 + signum
    err = capsys.readouterr().err
    assert err.strip() == f"mnistlab bench: interrupted by {signal.Signals(signum).name}"
    assert list(tmp_path.iterdir()) == []  # the run's temporary folder, its last.ckpt and run.lock are gone
    assert signal.getsignal(signal.SIGTERM) is sigterm_safety  # the handler before it, back


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_outside_the_trainer_is_one_line_too(signum, mnist_root, monkeypatch, capsys):
    # SIGTERM killed the process (its temporary folders stayed); Ctrl-C exited 130 without a word.
    def recipe(data, seed, reuse_memory):
        os.kill(os.getpid(), signum)
        # The kernel may hand the signal to another thread (torch's), whose C handler then flags it for this
        # one: under load that came after the next line had already run. The sleep ends when it is handled.
        time.sleep(30)
        pytest.fail("the signal did not stop the public recipe")

    monkeypatch.setattr(bench, "public_recipe", recipe)
    assert main(["bench", "--data-dir", str(mnist_root), *TINY]) == 128 + signum
    assert capsys.readouterr().err.strip() == f"mnistlab bench: interrupted by {signal.Signals(signum).name}"


@pytest.mark.parametrize("argv, message", [
    (["--set", "model.name=vgg"], 'model "vgg" needs a layout'),  # the config's model, not only --models'
    (["--set", "model.channels=[512, 512]", "--set", "train.batch_size=30000"], "a training batch of 30000 needs"),
    (["--steps", "1000000000"], "synthetic images in memory"),
    (["--steps", "1", "--set", "train.batch_size=1000000"], "a training batch of 1000000 needs about"),
    # what train() refuses once the data is read: these came after the public recipe's first run
    (["--set", "data.val_size=0"], "data.val_size must be at least 1 to train"),
    (["--set", "train.batch_size=1", "--set", "model.batch_norm=true"], "leaves batch norm one image per process"),
    (["--set", "train.class_weights=[1, 2]"], "train.class_weights has 2 weights, but the data has 10 classes"),
    (["--set", 'finetune.freeze=["features", "classifier"]'], "holds every parameter of the model"),
    (["--set", "finetune.init_from=no-such.ckpt"], "finetune.init_from: checkpoint no-such.ckpt does not exist"),
])
def test_settings_that_cannot_run_fail_before_the_first_run(argv, message, mnist_root, monkeypatch, capsys):
    # Each failed only after the data and the public recipe (the memory ones with the allocator's traceback).
    monkeypatch.setattr(bench, "public_recipe", lambda *a, **k: pytest.fail("a run started"))
    assert main(["bench", "--data-dir", str(mnist_root), "--models", "cnn", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnistlab bench: error: ") and message in err, err


def test_run_bench_keeps_the_callers_state_and_takes_its_seeds_from_train_seed(mnist_root, capsys, monkeypatch):
    small_matmuls(monkeypatch)
    first_test_images(monkeypatch)
    cfg = apply_overrides(Config(), {"data.dir": str(mnist_root), "train.epochs": 1, "train.threads": 1,
                                     "train.seed": 5, "data.val_size": 100,
                                     "optimizer.momentum": 0.5})  # momentum: Adam does not read it
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    lines = []
    bench.run_bench(cfg, seeds=2, models=["cnn"], steps=1, train_limit=256, out=lines.append)
    assert torch.get_num_threads() == threads  # it ran on 1 thread, and gave the caller's count back
    assert torch.equal(torch.rand(3), expected)  # and the caller's random stream
    table = next(text for text in lines if text.startswith("recipe"))
    seeds = [row.split()[-4] for row in table.splitlines()[2:]]  # recipe names have spaces; count from the end
    assert seeds == ["5", "5", "6", "6"]  # --set train.seed was ignored: the seeds were 0 and 1
    err = capsys.readouterr().err
    # one warning for the two seeds' runs and the check before them, as bench's, not as `mnistlab train`'s
    assert err.count("warning: optimizer.momentum") == 1 and "mnistlab bench: warning: optimizer.momentum" in err
    assert "mnistlab train" not in err


def test_the_ratio_is_of_the_seconds_measured_not_of_the_rounded_ones(mnist_root, monkeypatch):
    # Both rounded to 0.00 s: the ratio divided by zero; at 0.004 / 0.001 it read 0.00x or 0.50x by rounding.
    monkeypatch.setattr(bench, "public_recipe", lambda data, seed, reuse_memory: {"test_accuracy": 0.9, "train_seconds": 0.004,
                                                                     "precision": "fp32"})
    monkeypatch.setattr(bench, "time_to_accuracy", lambda o, seeds, config: [{
        "test_accuracy": 0.9, "train_seconds": 0.001, "precision": "fp32", "compile_seconds": 0.0}])
    monkeypatch.setattr(bench, "roofline", lambda *a, **k: [])
    monkeypatch.setattr(bench, "thread_scaling", lambda: "")
    monkeypatch.setattr(bench, "eval_seconds", lambda *a, **k: (0.1, 0.1))
    lines = []
    cfg = apply_overrides(Config(), {"data.dir": str(mnist_root)})
    bench.run_bench(cfg, models=["cnn"], steps=1, train_limit=256, out=lines.append)
    assert "training time of this config / public recipe: 0.25x (medians)" in lines


@pytest.mark.parametrize("call", [
    lambda: bench.roofline(["cnn"], rounds=0),
    lambda: bench.training_rate("cnn", steps=0),
    lambda: bench.training_rate("cnn", batch_size=0),
    lambda: bench.run_bench(Config(), train_limit=0),  # it meant "no limit"
    lambda: bench.run_bench(Config(), seeds=0),
])
def test_the_api_refuses_counts_below_one(call):
    with pytest.raises(ValueError, match="at least 1"):
        call()


def test_the_matmul_rate_leaves_the_global_random_stream_alone():
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    bench.matmul_rates(n=32, repeats=1)
    assert torch.equal(torch.rand(2), expected)
