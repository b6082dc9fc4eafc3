"""Python API inputs that ended in a bare TypeError, or in an exception that could not cross a process boundary."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import pytest
import torch

from mnistlab.data.datasets import Split
from mnistlab.errors import ConfigError, Signalled
from mnistlab.models import build_model
from mnistlab.training import TrainingInterrupted, evaluate, predict_logits


@pytest.mark.parametrize("batch_size", [0, -1, "256", 2.5, True, None])
def test_evaluate_and_predict_logits_refuse_a_batch_size_that_is_not_a_whole_number_of_images(batch_size):
    # "256" and None were "'<=' not supported", 2.5 "'float' object cannot be interpreted as an integer", and
    # predict_logits' 0 "range() arg 3 must not be zero"
    model = build_model("cnn", width=0.25)
    split = Split(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    for call, name in ((lambda: evaluate(model, split, batch_size=batch_size), "evaluate"),
                       (lambda: predict_logits(model, split.images, batch_size=batch_size), "predict_logits")):
        with pytest.raises(ConfigError, match=rf"{name}\(\): batch_size must be a whole number of images, 1 or more"):
            call()
    assert predict_logits(model, split.images, batch_size=2).shape == (3, 10)  # a valid one still works


def test_a_single_number_std_that_is_refused_says_why():
    # list(0.0) in the message itself failed: "TypeError: 'float' object is not iterable"
    with pytest.raises(ConfigError, match=r"std must be positive, got \[0.0\]"):
        build_model("cnn", mean=0.13, std=0.0)
    with pytest.raises(ConfigError, match=r"mean/std need 1 value\(s\), got \[0.25, 0.75\] / \[0.5\]"):
        build_model("cnn", mean=(0.25, 0.75), std=0.5)
    assert build_model("cnn", mean=0.13, std=0.3).std.item() == pytest.approx(0.3)


def test_interruptions_survive_pickling_as_a_worker_process_sends_them_back():
    # pickle rebuilds an exception as cls(*args): "missing 1 required positional argument: 'checkpoint'"
    e = TrainingInterrupted(signal.SIGTERM, Path("runs/x/last.ckpt"))
    e.run_dir, e.advice = Path("runs/x"), "progress saved; continue with ..."
    e.args = (e.advice,)
    back = pickle.loads(pickle.dumps(e))
    assert (type(back), back.signum, back.checkpoint, back.run_dir, back.advice, back.args, back.exit_code) == (
        TrainingInterrupted, signal.SIGTERM, Path("runs/x/last.ckpt"), Path("runs/x"), e.advice, e.args, 143)
    s = pickle.loads(pickle.dumps(Signalled(signal.SIGHUP)))
    assert type(s) is Signalled and s.signum == signal.SIGHUP


def test_load_data_takes_the_device_names_train_device_does(mnist_root):
    # device="auto" (cfg.train.device's default) was torch's "Expected one of cpu, cuda, ... string: auto"
    from mnistlab.config import DataConfig
    from mnistlab.data import load_data

    data = load_data(DataConfig(dir=str(mnist_root), train_limit=100, val_size=100), device="auto")
    assert data.train.images.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            load_data(DataConfig(dir=str(mnist_root), train_limit=100, val_size=100), device="cuda")
