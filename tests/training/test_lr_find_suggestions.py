"""When the range test may suggest a rate: not from a flat curve's noise, and what `lr-find` says instead."""

from __future__ import annotations

import numpy as np
import pytest

from mnistlab import Config, apply_overrides
from mnistlab.cli import main
from mnistlab.training import lr_find
from mnistlab.training.lr_find import RangeTest, geometric_rates, lr_range_test, smooth, steepest_descent

SMALL = ["train.batch_size=64", "train.progress=false", "train.threads=1", "train.precision=fp32"]


@pytest.mark.parametrize("seed", [0, 8, 9])
def test_rates_too_small_to_train_give_no_suggestion_from_the_noise(mnist_small, seed):
    # At 1e-10 to 1e-8 the weights do not move: the curve is the batches' noise, and its lowest point fell
    # after the settling steps by chance. These seeds were suggested 2e-10 to 8e-10 ("Train with --lr 3.0e-10").
    cfg = apply_overrides(Config(), [*SMALL, "model.name=cnn", "model.width=0.25", f"train.seed={seed}"])
    r = lr_range_test(cfg, data=mnist_small, min_lr=1e-10, max_lr=1e-8, steps=60)
    assert len(r.losses) == 60 and max(r.smoothed[10:]) < 1.01 * min(r.smoothed)  # flat after the settling start
    assert r.suggestion is None


def test_a_fall_beyond_the_noise_still_gives_the_steepest_point():
    rng = np.random.default_rng(0)
    lrs = geometric_rates(1e-6, 1.0, 100)
    flat = list(2.3 + 0.02 * rng.standard_normal(100))
    # pure noise: its steepest point was a suggestion in about a third of such curves
    assert steepest_descent(lrs, smooth(flat), losses=flat) is None
    falling = [x - (0.6 * (i - 40) / 30 if 40 <= i < 70 else 0.6 if i >= 70 else 0) for i, x in enumerate(flat)]
    s = smooth(falling)
    assert steepest_descent(lrs, s, losses=falling) == steepest_descent(lrs, s) is not None


def _fake(monkeypatch, result: RangeTest) -> None:
    monkeypatch.setattr(lr_find, "lr_range_test", lambda cfg, **kwargs: result)


def test_too_few_planned_steps_ask_for_more_steps_not_a_lower_min_lr(monkeypatch, tmp_path, capsys):
    # All 5 planned steps ran: "lower --min-lr or raise --steps" sent the user to a setting that changes nothing.
    lrs = geometric_rates(1e-7, 10, 5)
    losses = [2.3, 2.3, 2.2, 2.1, 2.4]
    _fake(monkeypatch, RangeTest(lrs, losses, smooth(losses), None, lrs[3], "reached max_lr 1.00e+01 after 5 steps"))
    assert main(["lr-find", "--steps", "5", "--plot", str(tmp_path / "p.png")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("no suggestion: "))
    assert line == ("no suggestion: --steps 5 is fewer than the 14 steps a suggestion needs (the first 10 are "
                    "skipped while the average settles); raise --steps")


def test_json_output_says_why_there_is_no_suggestion(monkeypatch, tmp_path, capsys):
    # --json gave "suggestion": null and no reason: the text output's line was worked out in the CLI alone
    import json

    lrs = geometric_rates(1e-7, 10, 5)
    losses = [2.3, 2.3, 2.2, 2.1, 2.4]
    result = RangeTest(lrs, losses, smooth(losses), None, lrs[3], "reached max_lr 1.00e+01 after 5 steps")
    _fake(monkeypatch, result)
    assert main(["lr-find", "--steps", "5", "--json", "--plot", str(tmp_path / "p.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["suggestion"] is None and out["no_suggestion"] == result.why_no_suggestion(5)
    assert out["no_suggestion"].startswith("--steps 5 is fewer than the 14 steps a suggestion needs")


@pytest.mark.parametrize("stop, advice", [
    ("reached max_lr 1.00e-06 after 40 steps", "up to 1.0e-06 the rates are too small to train in these steps; "
                                               "raise --max-lr"),
    ("the smoothed loss passed 4x its lowest value at lr 1.00e-06 (step 40 of 40)",
     "no rate before those that broke it trained it; raise --steps, so that the rates rise more slowly (weights "
     "that start trained, from --init-from, may have nothing left to learn at any rate)"),
])
def test_a_fall_within_the_noise_says_so_and_what_to_change(monkeypatch, tmp_path, capsys, stop, advice):
    # A noisy flat curve whose lowest point comes after the settling steps and lies more than 1% below the
    # first loss (so not "hardly changed"): it had no message of its own, and fell to "lowest too early".
    lrs = geometric_rates(1e-8, 1e-6, 40)
    losses = [2.36] + [2.30 + (0.02 if i % 2 else -0.02) for i in range(38)] + [2.26]
    s = smooth(losses)
    assert steepest_descent(lrs, s) is not None and steepest_descent(lrs, s, losses=losses) is None
    _fake(monkeypatch, RangeTest(lrs, losses, s, None, lrs[39], stop))
    assert main(["lr-find", "--steps", "40", "--plot", str(tmp_path / "p.png")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("no suggestion: "))
    fall, noise = lr_find.descent(s, losses)
    assert line == (f"no suggestion: the average loss fell by {fall:.4f} to its lowest ({min(s):.4f}, at lr 1.0e-06), "
                    f"no more than 2x the noise of the batches' losses ({noise:.4f}): {advice}")
