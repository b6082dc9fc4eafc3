"""The learning-rate range test: each step at its planned rate through the real Trainer, the stop rules,
the suggestion on real MNIST, and the `mnistlab lr-find` command."""

from __future__ import annotations

import json
import math
import os
import signal
import threading

import pytest
from PIL import Image

from mnistlab import Config, apply_overrides
from mnistlab.cli import main
from mnistlab.training.lr_find import MIN_STEPS, geometric_rates, lr_range_test, smooth, steepest_descent

# mnist_small: 2,000 images, 32 steps an epoch. One thread: these nets are too small to gain from two, and on a
# busy 2-core machine the second thread's waiting cost 4-6x the CPU time of the steps themselves.
SMALL = ["train.batch_size=64", "train.progress=false", "train.threads=1"]


def test_every_step_runs_at_its_planned_rate_across_epochs_whatever_the_schedule(mnist_small):
    # (train.max_steps is the run's, not the test's: it ran 5 steps)
    cfg = apply_overrides(Config(), [*SMALL, "optimizer.name=sgd", "schedule.name=onecycle", "ema.enabled=true",
                                     "train.max_steps=5"])
    r = lr_range_test(cfg, data=mnist_small, min_lr=1e-5, max_lr=1e-3, steps=40)  # too small to diverge
    # the rates the trainer reported for each step, over the end of epoch 1: the test's, not the one-cycle's
    assert r.lrs == pytest.approx(geometric_rates(1e-5, 1e-3, 40), rel=1e-12)
    assert r.stop_reason == "reached max_lr 1.00e-03 after 40 steps"
    assert len(r.losses) == 40 and all(math.isfinite(x) for x in r.losses)
    assert r.smoothed == smooth(r.losses)
    assert r.lowest == r.lrs[r.smoothed.index(min(r.smoothed))]


def test_on_real_mnist_it_stops_once_the_loss_climbs_and_suggests_a_rate_where_it_fell(mnist_small):
    cfg = apply_overrides(Config(), [*SMALL, "model.name=lenet5", "optimizer.name=adam"])
    r = lr_range_test(cfg, data=mnist_small)  # 1e-7 to 10 over 100 steps
    assert r.stop_reason.startswith("the smoothed loss passed 4x its lowest value at lr")
    assert len(r.lrs) < 100 and r.smoothed[-1] > 4 * min(r.smoothed)
    assert min(r.smoothed) < 0.8 * r.smoothed[0]  # it learned on the way (the first loss is near ln 10)
    # Adam's useful rates for this net lie around 1e-3 to 1e-2; a broken rule lands at either end of the range
    assert 3e-4 <= r.suggestion <= 5e-2 and r.suggestion < r.lowest < r.lrs[-1]


def test_a_non_finite_loss_ends_the_test_and_names_its_rate(mnist_small):
    cfg = apply_overrides(Config(), [*SMALL, "optimizer.name=sgd"])
    r = lr_range_test(cfg, data=mnist_small, min_lr=1e-2, max_lr=1e30, steps=40, diverge=1e300)  # no 4x stop
    step = len(r.losses) + 1
    assert step <= 40
    rate = geometric_rates(1e-2, 1e30, 40)[step - 1]
    assert r.stop_reason == f"the loss was not finite at lr {rate:.2e} (step {step})"


def test_steepest_descent_skips_the_settling_start_and_needs_enough_steps():
    lrs = geometric_rates(1e-6, 1.0, 40)
    # a cliff inside the first 10 steps (the average settling) is ignored, and so is the dip after the
    # lowest point (step 24), where the rates are already too large; the fall in between counts
    losses = ([5.0] * 3 + [2.3] * 12 + [2.25, 2.15, 2.0, 1.6, 1.3, 1.15, 1.05, 1.0, 0.97, 0.95]
              + [1.2, 2.0, 3.0, 3.0, 2.0, 1.1] + [3.0] * 9)
    assert len(losses) == 40 and losses.index(min(losses)) == 24
    assert steepest_descent(lrs, losses) == lrs[18]  # np.gradient: the central slope (1.3 - 2.0) / 2 there
    assert steepest_descent(lrs, [2.0] * 10 + [3.0] * 30) is None  # no descent after the settling start
    short = [2.0 - 0.1 * i for i in range(MIN_STEPS)]
    assert steepest_descent(lrs, short[:-1]) is None and steepest_descent(lrs, short) is not None


def test_the_lowest_point_is_not_taken_for_the_steepest_by_a_one_sided_slope():
    # Cut at the lowest point (3.4, at 6) before the slope was taken, its one-sided slope (3.4 - 4.0) was the
    # steepest; its central slope is (4.5 - 4.0) / 2, and the fall into it is steepest at 5
    losses = [5, 4.9, 4.7, 4.4, 4.0, 3.4, 4.5, 6]
    assert steepest_descent([1, 2, 3, 4, 5, 6, 7, 8], losses, skip_begin=0, skip_end=0) == 5


def test_it_leaves_the_callers_random_stream_and_threads_and_keeps_the_frozen_layers_frozen(mnist_small, monkeypatch):
    # It seeds torch as train() does and sets train.threads: the caller got both changed. And
    # finetune.unfreeze_at released the frozen layers partway through the test, at a step set by the data.
    import torch

    from mnistlab.training.fit import Trainer

    released = []
    monkeypatch.setattr(Trainer, "_unfreeze", lambda self: released.append(self.step) or False)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    before = torch.get_rng_state().clone()
    cfg = apply_overrides(Config(), [*SMALL, "train.threads=1", 'finetune.freeze=["features"]',
                                     "finetune.unfreeze_at=2"])
    lr_range_test(cfg, data=mnist_small, min_lr=1e-5, max_lr=1e-3, steps=40)  # 32 steps an epoch: 2 epochs
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads
    assert released == []


@pytest.mark.parametrize("kwargs, message", [
    ({"min_lr": 1e-2, "max_lr": 1e-3}, "needs 0 < min_lr < max_lr"),
    ({"min_lr": 0.0}, "needs 0 < min_lr < max_lr"),
    ({"steps": 1}, "needs 2 to 100,000 steps"),
    ({"steps": 10**9}, "needs 2 to 100,000 steps"),  # the planned rates are a list: a billion would not fit
    ({"min_lr": 1e-10, "max_lr": 1e300}, "too large to compute"),  # the ratio overflows: every rate would be inf
    ({"diverge": 1.0}, "diverge must be a finite number above 1"),
    ({"diverge": float("nan")}, "diverge must be a finite number above 1"),  # would never stop the test
    ({"diverge": float("inf")}, "diverge must be a finite number above 1"),
    ({"beta": 1.0}, r"beta must be in \[0, 1\)"),  # divided by zero
    ({"beta": -1.0}, r"beta must be in \[0, 1\)"),
    ({"beta": float("nan")}, r"beta must be in \[0, 1\)"),  # every smoothed value NaN
])
def test_bad_settings_are_config_errors(kwargs, message):
    from mnistlab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        lr_range_test(Config(), **kwargs)  # before any data is read


def test_the_command_prints_the_curve_and_suggestion_and_writes_only_the_plot(mnist_root, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.chdir(tmp_path)
    args = ["lr-find", "--data-dir", str(mnist_root), "--set", "data.train_limit=2000", "--set", "data.val_size=500",
            "--batch-size", "64", "--steps", "30", "--min-lr", "1e-4", "--max-lr", "0.1", "--threads", "1"]
    assert main([*args, "--json", "--plot", "curves/lr.png"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"lrs", "losses", "smoothed", "suggestion", "lowest", "stop_reason", "precision",
                        "no_suggestion", "plot"}
    assert out["lrs"] == pytest.approx(geometric_rates(1e-4, 0.1, 30)[:len(out["lrs"])])
    with Image.open(tmp_path / "curves" / "lr.png") as img:
        assert img.format == "PNG" and img.size[0] >= 600
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["curves", "curves/lr.png"]

    assert main([*args, "--set", "schedule.name=constant"]) == 0
    lines = capsys.readouterr().out.splitlines()
    autocast = "" if out["precision"] == "fp32" else f"{out['precision']} autocast, "  # auto: bf16 on some CPUs
    assert lines[0] == f"learning-rate range test: fast on mnist, adam, batch 64, {autocast}0.0001 to 0.1 over 30 steps"
    assert lines[1].split() == ["step", "lr", "loss", "average"]
    assert lines[2].split()[:2] == ["1", "1.0e-04"]
    suggested = next(line for line in lines if line.startswith("suggested learning rate: "))
    assert f"Train with --lr {out['suggestion']:.1e}" in suggested  # the same seed, the same test: no schedule
    assert lines[-2].startswith(f"with a constant rate, 0.3x the suggestion ({0.3 * out['suggestion']:.1e})")
    assert lines[-1] == "plot: lr_find.png" and (tmp_path / "lr_find.png").is_file()


def test_a_loss_lowest_within_the_skipped_steps_asks_for_a_slower_rise(mnist_root, tmp_path, monkeypatch, capsys):
    # Rates that rise a million-fold per 3 steps: the loss is lowest early and climbs past 4x within 20 steps.
    # The advice was "raise --max-lr", which makes it worse.
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", "--data-dir", str(mnist_root), "--set", "data.train_limit=500", "--set",
                 "data.val_size=100", "--model", "cnn", "--set", "model.width=0.25", "--batch-size", "32",
                 "--steps", "30", "--min-lr", "1e-4", "--max-lr", "1e9", "--threads", "1"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("no suggestion: "))
    assert "too early to see it fall after the first 10 steps" in line and line.endswith(
        "lower --max-lr or raise --steps, so that the rates rise more slowly")


def test_rates_too_small_to_move_the_loss_ask_for_a_higher_max_lr(mnist_root, tmp_path, monkeypatch, capsys):
    # The average hardly changes, its lowest point lands on an early step by noise, and the advice was the
    # one for a loss that rises at once: "lower --max-lr", which makes the rates smaller still.
    monkeypatch.chdir(tmp_path)
    args = ["lr-find", "--data-dir", str(mnist_root), "--set", "data.train_limit=500", "--set", "data.val_size=100",
            "--model", "cnn", "--set", "model.width=0.25", "--batch-size", "32", "--steps", "30", "--threads", "1"]
    assert main([*args, "--min-lr", "1e-12", "--max-lr", "1e-11"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("no suggestion: "))
    assert line.startswith("no suggestion: the average loss hardly changed (") and line.endswith(
        "up to 1.0e-11 the rates are too small to train in these steps; raise --max-lr")
    # A first loss that overflows, before any update: no rate is to blame (it raised ValueError from argmin)
    assert main([*args, "--set", f"train.class_weights={[1e38] * 10}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("no suggestion: "))
    assert line.startswith("no suggestion: the loss (or its gradients) was not finite at the first step, before any "
                           "update, so no learning rate can change it")


def test_the_command_refuses_a_plot_it_cannot_write_before_reading_any_data(tmp_path, capsys):
    code = main(["lr-find", "--data-dir", str(tmp_path / "no-data-here"), "--plot", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot write the plot {tmp_path}: it is a folder" in err and "MNIST" not in err
    assert main(["lr-find", "--min-lr", "1", "--max-lr", "0.5", "--plot", str(tmp_path / "sub" / "p.png")]) == 2
    assert "needs 0 < min_lr < max_lr" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before the plot's folder was made


def test_ctrl_c_ends_the_command_with_130_and_writes_nothing(mnist_root, tmp_path, capsys):
    # rates far too small to diverge and more steps than it could take: only the signal ends it
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code = main(["lr-find", "--data-dir", str(mnist_root), "--set", "data.train_limit=2000", "--model", "lenet5",
                     "--min-lr", "1e-12", "--max-lr", "1e-11", "--steps", "100000", "--plot", str(tmp_path / "p.png"),
                     "--threads", "1"])  # the 3 s cost 3 s of CPU time, not 6
    finally:
        timer.cancel()
    assert code == 130
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert err == "" or err == "mnistlab lr-find: interrupted by SIGINT; nothing was written\n"


def test_with_init_from_it_starts_from_the_checkpoint_weights(mnist_root, mnist_small, tmp_path):
    from mnistlab import train

    base = [f"data.dir={mnist_root}", "data.train_limit=2000", "data.val_size=500", "model.name=lenet5", *SMALL]
    source = apply_overrides(Config(), [*base, "train.epochs=2", "tensorboard.enabled=false"])
    trained = train(source, out=tmp_path / "source", quiet=True).summary["best_val_accuracy"]
    assert trained > 0.8
    tiny = dict(data=mnist_small, min_lr=1e-7, max_lr=1e-6, steps=5)  # rates too small to move the weights
    scratch = lr_range_test(apply_overrides(Config(), base), **tiny)
    finetune = lr_range_test(apply_overrides(Config(), [*base, f"finetune.init_from={tmp_path / 'source'}"]), **tiny)
    assert min(scratch.losses) > 2.0  # chance level: ln 10 = 2.3
    assert max(finetune.losses) < 1.0  # the trained net's loss on its training images


def test_checking_the_plot_path_leaves_no_folder_behind(tmp_path):
    from mnistlab.report.plots import check_plot_path, save_png

    target = tmp_path / "new" / "sub" / "p.png"
    assert check_plot_path(target) == target
    assert list(tmp_path.iterdir()) == []  # a command failing after the check leaves nothing
    save_png(b"png", target)  # the write makes the folders
    assert target.read_bytes() == b"png"


def test_an_emulated_precision_is_warned_about_before_the_test_and_named_in_its_header(mnist_root, tmp_path,
                                                                                      monkeypatch, capsys):
    import sys

    monkeypatch.setattr(sys.modules["mnistlab.training.fit"], "native_fp16", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", "--data-dir", str(mnist_root), "--set", "data.train_limit=200", "--set",
                 "data.val_size=100", "--batch-size", "20", "--steps", "4", "--model", "cnn", "--set",
                 "model.channels=[4,8]", "--set", "train.precision=fp16"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("mnistlab lr-find: warning: train.precision = fp16: this CPU has no fp16 "
                                   "arithmetic")
    assert ", batch 20, fp16 autocast, " in captured.out.splitlines()[0]
