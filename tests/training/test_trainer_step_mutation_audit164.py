"""Audit 164: mutation testing of the Trainer's step and set-up in fit.py (the constructor, _optimizer_step,
_backward_batch, _backward, _batch_rows, _prepare, _unfreeze, _save_ema) and of its helpers (use_channels_last,
check_training_memory, check_model_outputs, class_weights, resolve_device, _plain_metrics). Each test kills
mutants that the earlier tests let through; the expected values are worked out by hand or from the whole batch."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab import Config, apply_overrides, build_model
from mnistlab.data.datasets import Split
from mnistlab.errors import ConfigError
from mnistlab.training.fit import (Trainer, _plain_metrics, check_model_outputs, check_training_memory, class_weights,
                                   resolve_device, use_channels_last)

fit = sys.modules["mnistlab.training.fit"]  # the module; mnistlab.training's ``fit`` is its function
CPU = torch.device("cpu")


def cfg(*extra: str) -> Config:
    return apply_overrides(Config(), ["train.epochs=1", "train.batch_size=100", "train.threads=1",
                                      "train.precision=fp32", "train.device=cpu", "train.progress=false",
                                      "tensorboard.enabled=false", *extra])


def trainer(data, *extra: str, model: nn.Module | None = None, **kw) -> Trainer:
    torch.manual_seed(0)  # every trainer of a test starts from the same weights
    model = model if model is not None else build_model("cnn", width=0.25, mean=data.mean, std=data.std)
    return Trainer(model, data, cfg(*extra), **kw)


def batch(data, n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    return data.train.images[:n].float().div(255), data.train.labels[:n]


def grads(t: Trainer) -> list[torch.Tensor]:
    return [p.grad.clone() for p in t.model.parameters()]


# --- the constructor ---------------------------------------------------------------------------------------------

def test_a_bundle_without_validation_images_is_refused_before_training(mnist_small):
    empty = Split(images=torch.zeros(0, 1, 28, 28, dtype=torch.uint8), labels=torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ConfigError, match="data.val_size must be at least 1 to train"):
        trainer(replace(mnist_small, val=empty))


def test_a_remainder_of_one_image_joins_the_last_batch_and_the_last_batch_counts_its_rows(mnist_small):
    # 2,000 images in batches of 300: six of 300 and a last one of 200
    t = trainer(mnist_small, "train.batch_size=300")
    assert t.steps_per_epoch == 7
    assert [t._batch_rows(b) for b in range(7)] == [300] * 6 + [200]
    # in batches of 1,999 the one image left over joins the batch (batch norm cannot train on one row): one of 2,000
    t = trainer(mnist_small, "train.batch_size=1999")
    assert t.steps_per_epoch == 1 and t._batch_rows(0) == 2000


def test_the_memory_check_is_given_the_rows_kept_at_once(mnist_small, monkeypatch):
    seen = []
    monkeypatch.setattr(fit, "check_training_memory", lambda model, data, rows: seen.append(rows))
    trainer(mnist_small, "train.batch_size=500", "train.micro_batch_size=50")
    trainer(mnist_small, "train.batch_size=5000")  # a batch above the split is the split
    assert seen == [50, 2000]


def test_channels_last_puts_the_model_and_its_batches_in_that_layout(mnist_small):
    t = trainer(mnist_small, "train.channels_last=true")
    conv = t.model.features[3].weight  # (the first conv's single input channel is alike in both layouts)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, y = batch(mnist_small, 8)
    assert t._prepare(x, y)[0].is_contiguous(memory_format=torch.channels_last)
    off = trainer(mnist_small, "train.channels_last=false")
    assert off.model.features[3].weight.is_contiguous() and off._prepare(x, y)[0] is x


def test_grad_checkpoint_switches_the_models_recomputation_on(mnist_small):
    assert trainer(mnist_small, "train.grad_checkpoint=true").model.grad_checkpointing is True
    assert trainer(mnist_small).model.grad_checkpointing is False


# --- a batch's forward and backward ------------------------------------------------------------------------------

def test_a_batch_in_micro_batches_gives_the_whole_batchs_sums_and_gradients(mnist_small):
    x, y = batch(mnist_small)
    whole, parts = trainer(mnist_small), trainer(mnist_small, "train.micro_batch_size=30")
    for t in (whole, parts):
        t.model.eval()  # no dropout: the same function of the weights in both
    assert [len(py) for _, py, _ in parts._parts(x, y, None)] == [25, 25, 25, 25]
    a, b = whole._backward_batch(x, y, 100), parts._backward_batch(x, y, 100)
    with torch.no_grad():
        logits = whole.model(x)
    # the loss sum (mean x rows), the correct predictions and the images seen, by hand
    assert a[0].item() == pytest.approx(F.cross_entropy(logits, y).item() * 100, rel=1e-5)
    assert a[1].item() == (logits.argmax(1) == y).sum().item() and a[2].item() == 100
    assert torch.allclose(a, b, rtol=1e-5)
    assert all(torch.allclose(g, h, rtol=1e-4, atol=1e-7) for g, h in zip(grads(whole), grads(parts)))


def test_a_mixed_batch_counts_a_prediction_correct_when_it_names_the_larger_share(mnist_small):
    t = trainer(mnist_small)
    t.model.eval()
    x, y = batch(mnist_small)
    partner = y.roll(1)
    with torch.no_grad():
        logits = t.model(x)
    pred = logits.argmax(1)
    assert bool((y != partner).any())
    sums = t._backward(x, y, 100, (partner, 0.5))  # an even blend: the image's own label
    assert sums[1].item() == (pred == y).sum().item()
    sums = t._backward(x, y, 100, (partner, 0.3))
    assert sums[1].item() == (pred == partner).sum().item()
    expected = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, partner)
    assert sums[0].item() == pytest.approx(expected.item() * 100, rel=1e-5)


def test_each_rank_but_the_last_part_backs_up_without_ddps_averaging(mnist_small):
    # Under DDP only the last part's backward may average the gradients (once per step); the others run in
    # no_sync. Stood in for here by a forward module that records the parts run inside no_sync.
    t = trainer(mnist_small, "train.micro_batch_size=30")
    inside, calls = [], []

    class Recording(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.quiet = model, False

        def forward(self, x):
            calls.append(self.quiet)
            return self.model(x)

        def no_sync(self):
            forward = self

            class Quiet:
                def __enter__(self):
                    forward.quiet = True
                    inside.append(True)

                def __exit__(self, *exc):
                    forward.quiet = False

            return Quiet()

    t._forward, t._world = Recording(t.model), 2
    x, y = batch(mnist_small)
    t._backward_batch(x, y, 200)
    assert calls == [True, True, True, False] and len(inside) == 3


def test_fp16_scales_the_loss_before_backward(mnist_small):
    x, y = batch(mnist_small, 20)
    plain, half = trainer(mnist_small), trainer(mnist_small, "train.precision=fp16")
    half.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    plain._backward_batch(x, y, 20)
    half._backward_batch(x, y, 20)
    ratio = torch.cat([g.flatten() for g in grads(half)]).norm() / torch.cat([g.flatten() for g in grads(plain)]).norm()
    assert ratio.item() == pytest.approx(1024, rel=0.05)  # fp16's rounding aside


# --- the optimizer step ------------------------------------------------------------------------------------------

def _set_grads(t: Trainer, value: float) -> None:
    for p in t.model.parameters():
        p.grad = torch.full_like(p, value)


def _weights(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


def test_fp16_skips_an_overflowing_step_and_stops_only_below_a_scale_of_1(mnist_small):
    t = trainer(mnist_small, "train.precision=fp16")
    t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    t.scaler.scale(torch.ones(()))  # (the scale's tensor is made in the first scale())
    start = _weights(t)
    _set_grads(t, math.inf)
    assert t._optimizer_step() is True  # skipped, and the scale halved to 1: still a scale to train with
    assert t.scaler.get_scale() == 1.0 and t.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(start, _weights(t)))
    _set_grads(t, 0.5)
    assert t._optimizer_step() is True  # a good step: taken, the scale kept (it grows after 2000 of them)
    assert t.scaler.get_scale() == 1.0 and t.skipped_steps == 1
    assert not any(torch.equal(a, b) for a, b in zip(start, _weights(t)))
    _set_grads(t, math.inf)
    assert t._optimizer_step() is False  # below 1: the gradients overflow unscaled, and the run stops
    assert t.scaler.get_scale() == 0.5 and t.skipped_steps == 2


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_grad_clip_bounds_the_true_gradients_norm(mnist_small, precision):
    # SGD at rate 1 without momentum or decay: the step is minus the (clipped, unscaled) gradient
    t = trainer(mnist_small, f"train.precision={precision}", "train.grad_clip=1.0", "optimizer.name=sgd",
                "optimizer.momentum=0", "optimizer.weight_decay=0")
    for group in t.optimizer.param_groups:
        group["lr"] = 1.0
    count = sum(p.numel() for p in t.model.parameters())
    scale = 1.0
    if precision == "fp16":
        t.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        t.scaler.scale(torch.ones(()))
        scale = 1024.0
    for true_norm in (0.5, 10.0):  # under the threshold: left as it is; above: brought down to 1
        start = _weights(t)
        _set_grads(t, scale * true_norm / math.sqrt(count))
        assert t._optimizer_step() is True
        moved = torch.cat([(a - b).flatten() for a, b in zip(start, _weights(t))]).norm().item()
        assert moved == pytest.approx(min(true_norm, 1.0), rel=1e-3)


# --- the batch as it is trained on --------------------------------------------------------------------------------

def test_augmentation_is_applied_to_the_training_batch(mnist_small):
    x, y = batch(mnist_small, 16)
    torch.manual_seed(0)
    out, mix = trainer(mnist_small, "augment.enabled=true", "train.channels_last=false")._prepare(x, y)
    assert mix is None and out.shape == x.shape and (out - x).abs().mean() > 0.01
    assert trainer(mnist_small, "train.channels_last=false")._prepare(x, y) == (x, None)


def test_cutmix_boxes_stay_inside_what_a_cropping_model_sees(mnist_small):
    crop = 6
    model = build_model("cnn", width=0.25, crop=crop, mean=mnist_small.mean, std=mnist_small.std)
    t = trainer(mnist_small, "mixup.cutmix_alpha=1.0", "train.channels_last=false", model=model)
    x, y = batch(mnist_small, 32)
    torch.manual_seed(0)
    for _ in range(20):
        out, (partner, share) = t._prepare(x, y)
        border = torch.ones(28, 28, dtype=torch.bool)
        border[crop:28 - crop, crop:28 - crop] = False
        assert torch.equal(out[..., border], x[..., border])  # the pixels the model cuts away are the image's own
        assert 0.0 <= share <= 1.0


# --- fine-tuning's release ----------------------------------------------------------------------------------------

def test_unfreeze_adds_one_group_with_zero_momentum_once_and_asks_for_a_new_compile(mnist_small):
    t = trainer(mnist_small, 'finetune.freeze=["features"]', "finetune.unfreeze_at=2", "optimizer.name=sgd",
                "optimizer.momentum=0.9")
    frozen = [p for n, p in t.model.named_parameters() if n.startswith("features")]
    assert not any(p.requires_grad for p in frozen) and len(t.optimizer.param_groups) == 1
    t._compiled = True
    assert t._unfreeze() is True
    assert all(p.requires_grad for p in frozen) and len(t.optimizer.param_groups) == 2
    assert t._compiled is False  # the trainable parameters changed: a compiled step is stale
    for p in frozen:  # SGD's velocity, as zeros (see optim.fill_missing_state)
        assert torch.equal(t.optimizer.state[p]["momentum_buffer"], torch.zeros_like(p))
    assert t._unfreeze() is False and len(t.optimizer.param_groups) == 2  # nothing left to release


# --- ema.ckpt -----------------------------------------------------------------------------------------------------

def test_ema_ckpt_keeps_the_best_epoch_and_for_a_training_monitor_goes_by_the_averages_accuracy(mnist_small, tmp_path):
    # checkpoint.monitor = train_loss in mode min: the average has no training loss, so ema.ckpt is chosen on its
    # validation accuracy, in that metric's own mode (higher is better), not in the monitor's
    t = trainer(mnist_small, "ema.enabled=true", "checkpoint.monitor=train_loss", "checkpoint.mode=min",
                run_dir=tmp_path)
    path = tmp_path / "ema.ckpt"
    for epoch, accuracy, loss, saved in [(1, 0.5, 1.0, True), (2, 0.4, 0.5, False), (3, 0.6, 2.0, True),
                                         (4, 0.55, 0.1, False), (5, 0.6, 0.1, False)]:
        path.unlink(missing_ok=True)
        t._save_ema(epoch, {"ema_val_accuracy": accuracy, "ema_val_loss": loss, "train_loss": 1.0})
        assert path.exists() is saved, epoch
    assert t._best_ema == 0.6


# --- the helpers --------------------------------------------------------------------------------------------------

class _Narrow(nn.Module):
    """A 1x1 conv with stride 2 and 4 input channels (PyTorch's CPU backward in channels-last crashes on it)."""
    channels_last_on_cpu = True

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 1, stride=2)


def test_channels_last_is_never_chosen_or_allowed_on_the_cpu_for_a_layer_it_crashes_on():
    assert use_channels_last(None, _Narrow(), CPU) is False
    with pytest.raises(ConfigError, match="backward pass of layer conv"):
        use_channels_last(True, _Narrow(), CPU)
    assert use_channels_last(False, _Narrow(), CPU) is False
    assert use_channels_last(None, _Narrow(16), CPU) is True  # 16 channels run; the model asks for it
    assert use_channels_last(None, nn.Linear(2, 2), CPU) is False  # a model that does not ask
    assert use_channels_last(None, nn.Linear(2, 2), torch.device("cuda")) is True


def test_the_memory_estimate_is_each_layers_output_times_the_batch_plus_4x_the_weights(monkeypatch):
    from types import SimpleNamespace

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    data = SimpleNamespace(in_channels=1, image_size=(28, 28))
    # per image: Flatten's 784 and the Linear's 10 floats; weights 7850 floats: 10 x 3176 + 4 x 31400 bytes
    need = 10 * (784 + 10) * 4 + 4 * (784 * 10 + 10) * 4
    monkeypatch.setattr(fit, "available_memory", lambda: need)
    check_training_memory(model, data, 10)
    monkeypatch.setattr(fit, "available_memory", lambda: need - 1)
    with pytest.raises(ConfigError, match="a training batch of 10 needs about"):
        check_training_memory(model, data, 10)
    monkeypatch.setattr(fit, "available_memory", lambda: None)  # not known: nothing checked
    check_training_memory(model, data, 10**9)


class _Outputs(nn.Module):
    def __init__(self, classes: int, fail: bool = False) -> None:
        super().__init__()
        self.classes, self.fail = classes, fail
        self.linear = nn.Linear(1, 1)

    def forward(self, x):
        if self.fail:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore")
        return torch.zeros(len(x), self.classes)


def test_the_models_outputs_are_checked_for_one_row_of_the_classes_per_image(mnist_small):
    check_model_outputs(_Outputs(10), mnist_small, CPU)
    with pytest.raises(ConfigError, match=r"for 2 images it gave \(2, 9\); build it with num_classes=10"):
        check_model_outputs(_Outputs(9), mnist_small, CPU)
    one = replace(mnist_small, val=Split(images=mnist_small.val.images[:1], labels=mnist_small.val.labels[:1]))
    check_model_outputs(_Outputs(10), one, CPU)  # a validation split of one image gives one row
    with pytest.raises(ConfigError, match="cannot take the data's images .*RuntimeError: mat1 and mat2 shapes cannot "
                                          "be multiplied$"):
        check_model_outputs(_Outputs(10, fail=True), mnist_small, CPU)
    hooked = _Outputs(9)
    hooked.register_forward_hook(lambda *a: None)
    check_model_outputs(hooked, mnist_small, CPU)  # its hooks would see a pass nobody asked for: left alone


def test_balanced_weights_refuse_a_missing_last_class_by_name():
    from types import SimpleNamespace as S

    data = S(train=S(labels=torch.tensor([0, 0, 1])), num_classes=3, classes=["a", "b", "c"])
    with pytest.raises(ConfigError, match="the training split has none of c; give the weights as a list"):
        class_weights("balanced", data)


def test_resolve_device_names_the_missing_gpu_and_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(fit, "_mps_available", lambda: False)
    assert resolve_device("auto") == CPU
    with pytest.raises(ConfigError, match="train.device = 'cuda' but no CUDA device is available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="train.device = 'cuda:2' but this machine has 2 CUDA device"):
        resolve_device("cuda:2")


def test_epoch_metrics_become_plain_numbers_or_a_clear_error():
    metrics = {"a": np.float32(0.5), "b": torch.tensor([2.0]), "c": "text", "d": 3}
    _plain_metrics(metrics)
    assert metrics == {"a": 0.5, "b": 2.0, "c": "text", "d": 3}
    assert all(type(v) in (float, str, int) for v in metrics.values())
    with pytest.raises(ConfigError, match="what checkpoints cannot hold .*keep them to numbers and strings"):
        _plain_metrics({"f": object()})


def test_an_epoch_counting_schedule_resumed_after_a_cut_short_epoch_counts_that_epoch_from_the_first_step(
        mnist_small):
    # mutant: "step >= start" as "step > start" in _scheduled_lr: the resumed run's first step fell back to
    # step // steps_per_epoch, which an epoch that train.max_steps cut short (here after 5 steps) puts behind
    t = trainer(mnist_small, "schedule.name=step", "schedule.step_epochs=1", "schedule.gamma=0.1",
                "optimizer.lr=1.0")
    spe = t.steps_per_epoch
    assert spe > 5
    t._plan_from = (1, 5)  # as restore() sets it: 1 epoch done, the run resumed at step 5
    rates = [t._scheduled_lr(s) for s in (5, 4 + spe, 5 + spe)]
    assert rates == pytest.approx([0.1, 0.1, 0.01])
