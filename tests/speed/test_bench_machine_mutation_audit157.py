"""Mutation audit 157 of ``mnistlab.bench`` and ``mnistlab.machine``: tests that kill the mutants the other
tests let live.

Each test checks a number ``mnistlab bench`` prints (a rate, a ratio, a fraction, a count) against a hand
computation. No test measures time: the clock, the timed functions and the runs are fakes that take exactly the
seconds given, so the numbers are exact on any machine.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from mnistlab import bench, machine
from mnistlab.config import Config, apply_overrides


class FakeClock:
    """``time.perf_counter`` that moves only when a faked piece of work says how long it took."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", c)
    return c


def fake_paths(clock, monkeypatch, seconds: dict[str, list[float]], calls: dict[str, int]):
    """matmul_paths whose products take ``seconds[name]`` in turn (the first: the untimed warm-up call)."""
    def paths(a, b):
        out = {}
        for name, times in seconds.items():
            it = iter(times)

            def product(name=name, it=it):
                calls[name] = calls.get(name, 0) + 1
                clock.work(next(it))
            out[name] = product
        return out

    monkeypatch.setattr(bench, "matmul_paths", paths)


# --- matmul_rates / matmul_gflops / thread_scaling


def test_the_matmul_rate_is_two_flops_per_multiply_add_of_the_median_timed_product(clock, monkeypatch):
    calls = {}
    # warm-up 100 s (not timed), then 1, 1 and 4 s: median 1 s (the mean, 2 s, is the slow outlier's)
    fake_paths(clock, monkeypatch, {"mm": [100, 1, 1, 4]}, calls)
    rates = bench.matmul_rates(n=1000, repeats=3)
    assert rates == {"mm": pytest.approx(2 * 1000**3 / 1 / 1e9)}  # 2 GFLOP per 1000^3 product, in 1 s
    assert calls == {"mm": 4}  # one warm-up and three timed


def test_the_warm_up_product_is_not_timed(clock, monkeypatch):
    # with two timed products the median is their mean: a timed warm-up (100 s) would move it
    fake_paths(clock, monkeypatch, {"mm": [100, 1, 3]}, {})
    assert bench.matmul_rates(n=1000, repeats=2) == {"mm": pytest.approx(2 / 2)}  # 2 GFLOP in a median of 2 s


def test_the_machine_rate_is_the_faster_path(monkeypatch):
    monkeypatch.setattr(bench, "matmul_rates", lambda *a, **k: {"mm": 10.0, "onednn": 30.0})
    assert bench.matmul_gflops() == 30.0


def test_thread_scaling_is_all_threads_over_one(monkeypatch):
    def rates(n=2048, repeats=5, device="cpu", threads=None, dtype=torch.float32):
        return {"mm": 10.0, "onednn": 8.0} if threads == 1 else {"mm": 25.0, "onednn": 40.0}

    monkeypatch.setattr(bench, "matmul_rates", rates)
    line = bench.thread_scaling()
    assert line.startswith("fp32 matmul on 1 thread: 10 GFLOP/s;") and line.endswith(": 40 GFLOP/s (4.00x)")


# --- training_rate


class FakeTrainer:
    """A Trainer whose first epoch takes 100 s (the warm-up) and each later one 2 s."""

    made: list = []

    def __init__(self, model, data, cfg, callbacks=(), device=None) -> None:
        self.cfg, self.images = cfg, len(data.train)
        FakeTrainer.made.append(self)

    def fit(self):
        return SimpleNamespace(history=[{"epoch": e, "seconds": 100.0 if e == 0 else 2.0}
                                        for e in range(self.cfg.train.epochs)])


def test_the_training_rate_is_of_the_second_epoch(monkeypatch):
    FakeTrainer.made = []
    monkeypatch.setattr(bench, "Trainer", FakeTrainer)
    assert bench.training_rate("cnn", batch_size=8, steps=5) == pytest.approx(8 * 5 / 2.0)  # 40 images in 2 s
    [t] = FakeTrainer.made
    assert t.images == 40 and t.cfg.train.epochs == 2 and t.cfg.train.batch_size == 8


# --- eval_seconds


def test_the_evaluation_seconds_are_the_median_after_an_untimed_warm_up(clock, monkeypatch):
    seconds = iter([50.0, 1.0, 2.0, 9.0])  # warm-up, then three timed passes: median 2 (min 1, mean 4)
    calls = []

    def evaluate(model, split, batch_size):
        calls.append(batch_size)
        clock.work(next(seconds))
        return SimpleNamespace(accuracy=0.75)

    monkeypatch.setattr(bench, "evaluate", evaluate)
    assert bench.eval_seconds(None, None, batch_size=100, repeats=3) == (2.0, 0.75)
    assert calls == [100] * 4


# --- the machine line, the memory check, the counts


def test_the_machine_line_by_hand(monkeypatch):
    monkeypatch.setattr(bench, "cpu_name", lambda: "Some CPU (AVX2)")
    monkeypatch.setattr(bench, "native_bf16", lambda: True)
    monkeypatch.setattr(bench, "native_fp16", lambda: False)
    monkeypatch.setattr(bench, "usable_cores", lambda: 64)
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (1.5, 2.5, 3.5), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert bench.machine_description() == (
        f"Some CPU (AVX2) with bf16 instructions, 64 cores, torch {torch.__version__}, 4 threads, "
        "load average 1.5 at start")  # the last minute's, not the 15 minutes'



def test_the_synthetic_images_are_counted_with_their_labels(monkeypatch):
    # 1,000 images of 784 pixel bytes and an 8-byte label: 792,000 bytes
    monkeypatch.setattr(bench, "available_memory", lambda: 791_999)
    with pytest.raises(bench.ConfigError, match="1,000 synthetic images"):
        bench.check_synthetic_memory(1000)
    monkeypatch.setattr(bench, "available_memory", lambda: 792_000)
    bench.check_synthetic_memory(1000)  # fits exactly


def test_the_memory_refusal_is_in_gib(monkeypatch):
    # 2,000,000 images x 792 bytes = 1.584e9 bytes = 1.48 GiB (1.6 "GiB" in units of 1e9); free 2^30 bytes = 1.0 GiB
    monkeypatch.setattr(bench, "available_memory", lambda: 2**30)
    with pytest.raises(bench.ConfigError, match=r"1\.5 GiB, but this machine has 1\.0 GiB free"):
        bench.check_synthetic_memory(2_000_000)


def test_time_to_accuracy_rows_carry_the_runs_summary(monkeypatch):
    import mnistlab.training.run as run

    summary = {"test_accuracy": 0.91, "train_seconds": 3.5, "best_val_accuracy": 0.93, "precision": "fp32"}
    monkeypatch.setattr(run, "train", lambda cfg, out, quiet, report: SimpleNamespace(summary=summary))
    assert bench.time_to_accuracy([], [7]) == [{"seed": 7, "test_accuracy": 0.91, "train_seconds": 3.5,
                                               "compile_seconds": 0.0, "val_accuracy": 0.93, "precision": "fp32"}]


def test_variant_runs_rows_carry_each_runs_seconds(monkeypatch, capsys):
    seconds = itertools.count(1)
    monkeypatch.setattr(bench, "time_to_accuracy", lambda overrides, seeds, config: [{
        "val_accuracy": 0.5, "train_seconds": float(next(seconds)), "compile_seconds": 99.0}])
    rows = bench.variant_runs(Config(), [("a", []), ("b", [])], seeds=1)
    assert rows == [{"seed": 0, "variant": "a", "val acc %": 50.0, "train s": 1.0},
                    {"seed": 0, "variant": "b", "val acc %": 50.0, "train s": 2.0}]


def test_the_ratio_is_of_the_medians_and_the_evaluation_rate_of_the_test_split(mnist_root, monkeypatch):
    recipe = iter([2.0, 2.0, 2.0])
    mine = iter([1.0, 1.0, 7.0])  # median 1 s against 2 s: 0.50x (the means: 3 / 2 = 1.50x)
    monkeypatch.setattr(bench, "public_recipe", lambda data, seed, reuse_memory: {
        "test_accuracy": 0.9, "train_seconds": next(recipe), "precision": "fp32"})
    monkeypatch.setattr(bench, "time_to_accuracy", lambda o, seeds, config: [{
        "test_accuracy": 0.9, "train_seconds": next(mine), "precision": "fp32", "compile_seconds": 0.0}])
    monkeypatch.setattr(bench, "roofline", lambda *a, **k: [])
    monkeypatch.setattr(bench, "thread_scaling", lambda: "")
    monkeypatch.setattr(bench, "eval_seconds", lambda *a, **k: (0.5, 0.1))
    lines = []
    cfg = apply_overrides(Config(), {"data.dir": str(mnist_root)})
    bench.run_bench(cfg, seeds=3, models=["cnn"], steps=1, train_limit=256, out=lines.append)
    assert "training time of this config / public recipe: 0.50x (medians)" in lines
    # the 10,000 test images in 0.5 s (not the 256 training images)
    assert lines[-1].splitlines()[-1].split() == ["cnn", "10000", "0.5", "20000"]


# --- the public recipe


def test_the_public_recipe_trains_on_every_image_and_its_last_partial_batch(mnist_small, monkeypatch):
    import dataclasses

    import torch.nn.functional as F

    from mnistlab.data import Split

    tr, te = mnist_small.train, mnist_small.test
    data = dataclasses.replace(mnist_small, train=Split(tr.images[:300], tr.labels[:300], tr.indices[:300]),
                               test=Split(te.images[:100], te.labels[:100], te.indices[:100]))
    batches = []
    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda logits, y: (batches.append(len(y)), real(logits, y))[1])
    bench.public_recipe(data, reuse_memory=False)
    assert batches == [256, 44]  # 300 images: one full batch and the 44 left over


# --- machine.py


def test_one_bf16_or_fp16_flag_is_enough(monkeypatch):
    assert machine.cpuinfo_has("flags\t\t: fpu avx2 avx512_bf16\n", machine.BF16_FLAGS)  # Zen 4: no AMX
    monkeypatch.setattr(machine, "_cpuinfo", lambda: "flags\t\t: fpu avx512_bf16 amx_bf16\n")
    assert machine.native_bf16() and not machine.native_fp16()
    monkeypatch.setattr(machine, "_cpuinfo", lambda: "flags\t\t: fpu avx512_fp16\n")
    assert machine.native_fp16() and not machine.native_bf16()


def test_two_clusters_of_one_core_kind_are_named_once():
    # an ARM SoC with two clusters of Cortex-A53 (Snapdragon 625): lscpu lists a "Model name:" per cluster
    assert machine.lscpu_model("Model name: Cortex-A53\nModel name: Cortex-A53\n") == "Cortex-A53"
