"""train.deterministic: deterministic algorithms only, for the run, put back after it.

CPU runs repeat bit for bit either way (test_determinism.py); what the setting changes shows on a GPU
(tests/gpu). Here: that it is on for the whole run (the epochs and the final test), off again after it, and
that an op without a deterministic version stops the run with a config error naming it.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from mnistlab.callbacks import Callback
from mnistlab.config import Config, apply_overrides
from mnistlab.errors import ConfigError
from mnistlab.training import train

run_module = sys.modules["mnistlab.training.run"]


def flags() -> tuple:
    # PyTorch's newer TF32 settings: once they are used, reading the legacy allow_tf32 flags raises
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark, torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cuda.matmul.fp32_precision, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


ON = (True, True, False, "ieee", "ieee", ":4096:8")


class Record(Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, step, metrics, trainer):
        self.seen.append(flags())


def tiny(root, *overrides):
    return apply_overrides(Config(), [f"data.dir={root}", "data.train_limit=200", "data.val_size=100",
                                      "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
                                      "model.name=cnn", "model.channels=[4, 8]", "train.epochs=1",
                                      "train.batch_size=50", "tensorboard.enabled=false", *overrides])


@pytest.fixture
def tested(monkeypatch):
    """The flags in force while the run's final test evaluates."""
    seen, evaluate = [], run_module.evaluate

    def recording(*args, **kwargs):
        seen.append(flags())
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate", recording)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    return seen


def test_deterministic_algorithms_for_the_whole_run_and_not_after(mnist_root, tmp_path, tested):
    before, look = flags(), Record()
    assert before[0] is False and before[-1] is None
    result = train(tiny(mnist_root, "train.deterministic=true"), out=tmp_path / "run", quiet=True, callbacks=[look])
    assert set(look.seen) == {ON}  # every step
    assert tested == [ON]
    assert flags() == before
    assert result.summary["test_accuracy"] > 0


def test_off_by_default_and_a_users_cublas_setting_is_kept(mnist_root, tmp_path, tested, monkeypatch):
    look = Record()
    train(tiny(mnist_root), out=tmp_path / "off", quiet=True, callbacks=[look])
    assert set(look.seen) == {flags()} and not look.seen[0][0]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's choice, also deterministic
    look = Record()
    train(tiny(mnist_root, "train.deterministic=true"), out=tmp_path / "on", quiet=True, callbacks=[look])
    assert set(look.seen) == {ON[:-1] + (":16:8",)}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


class NonDeterministicOp(Callback):
    def on_batch_begin(self, step, trainer):
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))  # put_ without accumulate: no such version


def test_an_op_without_a_deterministic_version_is_a_config_error_that_names_it(mnist_root, tmp_path):
    with pytest.raises(ConfigError) as err:
        train(tiny(mnist_root, "train.deterministic=true"), out=tmp_path / "run", quiet=True,
              callbacks=[NonDeterministicOp()])
    message = str(err.value)
    assert message.startswith("train.deterministic = true: put_ does not have a deterministic implementation")
    assert message.endswith("set train.deterministic = false to train with it")
    assert not torch.are_deterministic_algorithms_enabled()
    # without the setting the same op is just an op
    train(tiny(mnist_root), out=tmp_path / "plain", quiet=True, callbacks=[NonDeterministicOp()])


def test_a_callers_own_settings_come_back_exactly(mnist_root, tmp_path, tested):
    """warn_only, and TF32 set through PyTorch's newer API (where the legacy flags would raise)."""
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    # "medium" also makes the CPU's oneDNN matmuls bf16: it would stay for the later tests of this process
    legacy, cpu = torch.get_float32_matmul_precision(), torch.backends.mkldnn.matmul.fp32_precision
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_float32_matmul_precision("medium")
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        before, look = flags(), Record()
        train(tiny(mnist_root, "train.deterministic=true"), out=tmp_path / "run", quiet=True, callbacks=[look])
        assert set(look.seen) == {ON}
        assert flags() == before and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_float32_matmul_precision(legacy)  # then the newer API's fields, which it sets, as they were
        torch.backends.mkldnn.matmul.fp32_precision = cpu
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def test_overlapping_runs_share_the_mode_until_the_last_leaves():
    """Runs in threads share the process's setting: the first in sets it, the last out puts it back."""
    import threading

    from mnistlab.training.fit import deterministic_mode

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with deterministic_mode(True):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with deterministic_mode(True):
            b_in.set()
            a_out.wait(10)
            seen["b after a left"] = torch.are_deterministic_algorithms_enabled()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"b after a left": True}
    assert not torch.are_deterministic_algorithms_enabled()


class PutFeatures(torch.nn.Module):
    """A trunk whose forward pass has an op without a deterministic version."""

    def forward(self, x):
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
        return x


def test_a_refusal_while_the_model_is_built_is_not_called_a_shape_problem(mnist_root, tmp_path, monkeypatch):
    from mnistlab.models import _registry
    from mnistlab.models.base import Net

    def putnet(*, num_classes, in_channels, image_size):
        return Net(PutFeatures(), lambda n: torch.nn.Linear(n, num_classes), in_channels=in_channels,
                   image_size=image_size, name="putnet")

    monkeypatch.setitem(_registry._REGISTRY, "putnet", putnet)
    with pytest.raises(ConfigError, match=r"^train.deterministic = true: put_ does not have a deterministic "):
        train(apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=200", "data.val_size=100",
                                         "model.name=putnet", "train.deterministic=true"]),
              out=tmp_path / "run", quiet=True)
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_refusal_inside_torch_compile_is_not_blamed_on_the_compiler(mnist_root):
    """torch.compile wraps the op's error in its own ("RuntimeError when making fake tensor call")."""
    from mnistlab.data import load_data
    from mnistlab.models import build_model
    from mnistlab.training.fit import Trainer

    cfg = tiny(mnist_root, "train.deterministic=true", "train.compile=true")
    data = load_data(cfg.data)
    trainer = Trainer(build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), channels=[4, 8]),
                      data, cfg)

    def compiled_step(*args):
        try:
            torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
        except RuntimeError as e:
            raise RuntimeError("RuntimeError when making fake tensor call") from e

    trainer._backward_batch = compiled_step
    with pytest.raises(ConfigError, match=r"^train.deterministic = true: put_ does not have a deterministic "):
        trainer.fit()


class PutAtBegin(Callback):
    def on_train_begin(self, trainer):
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))


def test_the_trainer_alone_is_deterministic_from_the_callbacks_begin(mnist_root):
    from mnistlab.data import load_data
    from mnistlab.models import build_model
    from mnistlab.training.fit import Trainer

    cfg = tiny(mnist_root, "train.deterministic=true")
    trainer = Trainer(build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), channels=[4, 8]),
                      load_data(cfg.data), cfg, callbacks=[PutAtBegin()])
    with pytest.raises(ConfigError, match=r"^train.deterministic = true: put_ does not have"):
        trainer.fit()
    assert not torch.are_deterministic_algorithms_enabled()


def test_only_pytorchs_refusal_is_converted():
    from mnistlab.errors import deterministic_refusal

    assert deterministic_refusal(RuntimeError("my library: call torch.use_deterministic_algorithms(False) first, "
                                              "but you set it")) is None
    assert deterministic_refusal(RuntimeError("shape mismatch")) is None
