"""The GPU-only paths, checked on a CPU: a checkpoint's CUDA random states, a GPU running out of memory, and
load_model's device names. CUDA is faked where the code asks for it (torch.cuda.is_available, device_count)."""

import copy

import pytest
import torch
from torch import nn

from mnistlab.config import Config, apply_overrides
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.training import load_model, read_checkpoint
from mnistlab.training.fit import Trainer, check_resume
from mnistlab.training.run import config_model


def _cfg(*overrides):
    return apply_overrides(Config(), ["model.width=0.25", "train.batch_size=250", "train.epochs=1",
                                      "train.device=cpu", "train.threads=1", "train.progress=false", *overrides])


@pytest.fixture(scope="module")
def one_epoch(mnist_small, tmp_path_factory):
    """A run folder whose last.ckpt holds one epoch of `fast` (a quarter wide) on 2,000 images, and its payload."""
    run = tmp_path_factory.mktemp("run")
    cfg = _cfg()
    Trainer(config_model(cfg, mnist_small), mnist_small, cfg, run_dir=run).fit()
    return run, read_checkpoint(run / "last.ckpt")


def test_a_checkpoint_from_a_machine_with_more_gpus_resumes_on_one_with_fewer(one_epoch, mnist_small, monkeypatch):
    """last.ckpt holds one CUDA random state per GPU the writing process saw (torch.cuda.get_rng_state_all): one
    written on a 2-GPU machine and resumed on a 1-GPU one (or under CUDA_VISIBLE_DEVICES=0) raised IndexError
    from set_rng_state_all, a traceback, for the GPU not there."""
    _, payload = one_epoch
    payload = copy.deepcopy(payload)
    states = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    payload["rng"]["cuda"] = states
    cfg = _cfg("train.epochs=2")
    trainer = Trainer(config_model(cfg, mnist_small), mnist_small, cfg)
    restored = []

    def set_rng_state(state, device="cuda"):  # torch's, for a machine with one GPU
        if device not in (0, "cuda"):
            raise IndexError("tuple index out of range")
        restored.append((device, state))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    trainer.restore(payload)
    assert len(restored) == 1 and restored[0][0] == 0 and torch.equal(restored[0][1], states[0])
    assert trainer.epoch == 1


def test_a_damaged_gpu_random_state_is_refused_before_the_run(one_epoch):
    """A CUDA random state that is not a byte tensor failed in set_rng_state_all on a GPU, after the run had
    started; it is a damaged checkpoint, said when it is read for the resume, on any machine."""
    _, payload = one_epoch
    payload = copy.deepcopy(payload)
    payload["rng"]["cuda"] = ["not a state"]
    with pytest.raises(CheckpointError, match="training state is damaged.*rng"):
        check_resume(payload, _cfg("train.epochs=2"))


class _OutOfMemoryInTraining(nn.Module):
    """The model, except that a training step runs out of device memory, as CUDA says it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.81 GiB of which "
                "1.02 GiB is free. Of the allocated memory 120.1 GiB is allocated by PyTorch. See documentation for "
                "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
        return self.model(x)


def test_a_gpu_out_of_memory_in_training_is_one_config_error(mnist_small):
    """On the CPU, check_training_memory refuses a batch that cannot fit before training; on a GPU nothing did,
    and torch.OutOfMemoryError came out of the first step as a traceback."""
    cfg = _cfg()
    trainer = Trainer(_OutOfMemoryInTraining(config_model(cfg, mnist_small)), mnist_small, cfg)
    with pytest.raises(ConfigError) as e:
        trainer.fit()
    message = str(e.value)
    assert "\n" not in message and "batches of 250" in message and "train.micro_batch_size" in message
    assert "CUDA out of memory. Tried to allocate 20.00 GiB" in message and "Memory Management" not in message


def test_a_gpu_out_of_memory_while_compiling_is_not_called_a_compile_failure(mnist_small):
    """train.compile's passes before the clock ran the first batch: out of memory there was reported as
    "torch.compile could not compile the training step", and its way out was to turn compiling off."""
    cfg = _cfg("train.compile=true")
    trainer = Trainer(_OutOfMemoryInTraining(config_model(cfg, mnist_small)), mnist_small, cfg)
    with pytest.raises(ConfigError) as e:
        trainer.compile_ahead()  # the step raises before dynamo compiles anything (no C++ compiler needed)
    assert "ran out of memory" in str(e.value) and "could not compile" not in str(e.value)


def test_load_model_takes_the_device_names_of_train_device(one_epoch, monkeypatch):
    """load_model(path, device="auto") raised torch's "Expected one of cpu, cuda, ..." and device="cuda" on a
    machine without CUDA a traceback from torch's CUDA init; load_data takes both."""
    run, _ = one_epoch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert next(load_model(run / "last.ckpt", device="auto").parameters()).device.type in ("cpu", "mps")
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        load_model(run / "last.ckpt", device="cuda")
