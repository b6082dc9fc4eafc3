"""Closes two blind spots of test_determinism.py: seeds that do not reach the random draws, and draws that change
from process to process.

test_determinism.py runs its three trainings in one process and tells seeds apart by the final weights only.
So it still passed when (tried on a copy of src/):

- ``run.py`` seeded the global RNG with a constant instead of ``train.seed`` (the initial weights, dropout,
  augmentation and mixup then ignore the seed; the batch order alone made seeds 7 and 8 differ);
- the global RNG was seeded from something that changes from process to process (``hash(str(seed))``, which
  depends on PYTHONHASHSEED): same-seed runs then differ between two ``mnistlab train`` commands, while two
  runs inside one process still agree.

Here: two ``mnistlab train`` processes, with other PYTHONHASHSEEDs, working folders and run folder names, and
dropout, augmentation, mixup and EMA on, give the same weights and metrics bit for bit; and the seed reaches
the initial weights.
"""

from __future__ import annotations

import subprocess

import torch

from mnistlab import Callback
from mnistlab.config import Config, apply_overrides
from mnistlab.training import train
from reliability_helpers import ENV, assert_same_weights, cli_command, metrics_rows, small_args, small_overrides

RANDOM_PARTS = ("--set", "model.dropout=0.3", "--set", "augment.enabled=true", "--set", "mixup.alpha=0.2",
                "--set", "ema.enabled=true", "--epochs", "2", "--seed", "7")


def test_two_processes_with_the_same_seed_train_the_same_bits(mini_root, tmp_path):
    for name, hashseed in (("a", "1"), ("other-name", "2")):
        cwd = tmp_path / f"cwd-{name}"
        cwd.mkdir()
        proc = subprocess.run(cli_command("train", *small_args(mini_root, *RANDOM_PARTS), "--quiet",
                                          "--out", str(tmp_path / name)),
                              capture_output=True, text=True, timeout=300, cwd=cwd,
                              env={**ENV, "PYTHONHASHSEED": hashseed})
        assert proc.returncode == 0, proc.stderr
    a, b = tmp_path / "a", tmp_path / "other-name"
    for ckpt in ("last.ckpt", "best.ckpt", "ema.ckpt"):
        assert_same_weights(a / ckpt, b / ckpt)
    assert metrics_rows(a) == metrics_rows(b)


class InitialWeights(Callback):
    def __init__(self):
        self.weights = None

    def on_train_begin(self, trainer):
        self.weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_the_seed_sets_the_initial_weights(mini_root, tmp_path):
    def start(name, seed):
        probe = InitialWeights()
        cfg = apply_overrides(Config(), small_overrides(mini_root, "train.epochs=1", "data.train_limit=100",
                                                         f"train.seed={seed}"))
        train(cfg, out=tmp_path / name, callbacks=[probe], quiet=True)
        return probe.weights

    a, b, c = start("a", 7), start("b", 7), start("c", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)
