"""Resume is exact on CPU: 2 epochs in one go == 1 epoch, then resume for 1 more."""

import json

import pytest
import torch

from mnistlab.config import Config, apply_overrides
from mnistlab.errors import RunDirError
from mnistlab.training import read_checkpoint, train


def small_cfg(root, *overrides):
    return apply_overrides(
        Config(),
        [
            f"data.dir={root}",
            "data.train_limit=1500",
            "data.val_size=500",
            "model.name=cnn",
            "model.dropout=0.25",  # dropout draws from the global RNG, which must be restored too
            "train.batch_size=100",
            "train.threads=1",
            "tensorboard.enabled=false",
            *overrides,
        ],
    )


def weights(run_dir):
    return read_checkpoint(run_dir / "last.ckpt")["model"]


def test_one_plus_one_epochs_equals_two(mnist_root, tmp_path):
    cfg = small_cfg(mnist_root, "schedule.name=step", "schedule.step_epochs=1", "schedule.gamma=0.5")
    full = train(apply_overrides(cfg, ["train.epochs=2"]), out=tmp_path / "full", quiet=True)
    train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "half", quiet=True)
    resumed = train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "half", quiet=True)

    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    def without_time(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert without_time(full.fit.history) == without_time(resumed.fit.history)
    assert full.summary["test_accuracy"] == resumed.summary["test_accuracy"]
    assert json.loads((tmp_path / "half" / "summary.json").read_text())["epochs"] == 2


def test_a_second_run_into_the_same_folder_is_refused(mnist_root, tmp_path):
    cfg = small_cfg(mnist_root, "train.epochs=1", "data.train_limit=300")
    train(cfg, out=tmp_path / "run", quiet=True)
    with pytest.raises(RunDirError, match="already holds a run; continue it with `mnistlab train --resume"):
        train(cfg, out=tmp_path / "run", quiet=True)
