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


def test_fit_leaves_the_freeze_to_the_call_and_a_refused_call_leaves_the_model_as_it_was(mnist_small, mnist_root,
                                                                                          tmp_path):
    from test_api_misuse import small_model, tiny_cfg

    from mnistlab import apply_overrides, fit, train

    model = small_model(mnist_small)
    cfg = tiny_cfg(mnist_root)
    # freeze ["*"] is refused, and left every parameter frozen: freeze ["features"] then "held every parameter" too
    with pytest.raises(ConfigError, match=r"finetune.freeze \['\*'\] holds every parameter"):
        fit(model, mnist_small, apply_overrides(cfg, ['finetune.freeze=["*"]']))
    assert all(p.requires_grad for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, mnist_small, apply_overrides(cfg, ['finetune.freeze=["features"]']))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("features."))  # frozen in the call
    assert not all(torch.equal(before[k], after[k]) for k in after if k.startswith("classifier."))
    assert all(p.requires_grad for p in model.parameters())  # and trainable again after it

    # A refused call (a class_weights count the data does not have) came after init_from was loaded and the
    # model went channels-last: the caller's model kept the checkpoint's weights and the other layout.
    source = train(tiny_cfg(mnist_root, "train.seed=3"), out=tmp_path / "source", quiet=True, report=False)
    fresh = small_model(mnist_small)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ConfigError, match="class_weights"):
        fit(fresh, mnist_small, apply_overrides(cfg, [f"finetune.init_from={source.run_dir}",
                                                      "train.class_weights=[1.0, 2.0]"]), run_dir=tmp_path / "new")
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert all(t.is_contiguous() for t in fresh.parameters())
    assert not (tmp_path / "new").exists()
