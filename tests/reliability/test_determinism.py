"""Same seed, same config, same machine: the same weights and metrics, bit for bit, on the CPU.

What holds on a GPU is written in the README's Guarantees section (not bitwise); tests/gpu checks it where CUDA exists.
"""

from __future__ import annotations

import torch

from mnistlab.config import Config, apply_overrides
from mnistlab.training import train
from reliability_helpers import assert_same_weights, metrics_rows, small_overrides, weights


def run(root, out, seed: int):
    # Dropout and label smoothing: the global RNG and every part of the loss must repeat too.
    cfg = apply_overrides(Config(), small_overrides(root, "train.epochs=2", f"train.seed={seed}",
                                                     "model.dropout=0.25", "train.label_smoothing=0.1"))
    return train(cfg, out=out, quiet=True)


def test_the_same_seed_gives_identical_weights_and_metrics_and_another_seed_does_not(mini_root, tmp_path):
    a, b, c = (run(mini_root, tmp_path / name, seed) for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    assert_same_weights(tmp_path / "a" / "last.ckpt", tmp_path / "b" / "last.ckpt")
    assert_same_weights(tmp_path / "a" / "best.ckpt", tmp_path / "b" / "best.ckpt")
    assert metrics_rows(tmp_path / "a") == metrics_rows(tmp_path / "b")
    assert a.summary["test_loss"] == b.summary["test_loss"] and a.summary["test_accuracy"] == b.summary["test_accuracy"]

    wa, wc = weights(tmp_path / "a" / "last.ckpt"), weights(tmp_path / "c" / "last.ckpt")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())
    assert metrics_rows(tmp_path / "a") != metrics_rows(tmp_path / "c")
