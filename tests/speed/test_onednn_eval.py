"""Evaluation's oneDNN path (``Net.inference_forward``) computes what the plain forward does.

The path runs a CPU model's conv stack on oneDNN's blocked-layout tensors; it is
on for ``cnn`` and ``fast``. These tests compare it with the plain forward on
random weights and batch-norm statistics, check that evaluate and predict use it
and give the same results, and that every case it cannot serve exactly (training,
gradients, hooks, autocast, other dtypes, layers oneDNN lacks) gets the plain
forward. Timings are in benchmarks/evaluate_speed.py, not here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnistlab.bench import synthetic_data
from mnistlab.models import build_model
from mnistlab.training.evaluate import evaluate, predict_logits

CASES = {
    "cnn": dict(channels=[4, 8]),
    "cnn, batch norm, stride 2": dict(channels=[4, 8], batch_norm=True, stride=2),
    "fast preset's shape": dict(channels=[4, 8], batch_norm=True, bn_after_pool=True, crop=2, hidden=[16]),
}


def _net(name: str = "cnn", channels_last: bool = True, **options) -> nn.Module:
    torch.manual_seed(0)
    net = build_model(name, num_classes=10, in_channels=1, image_size=(28, 28), mean=(0.13,), std=(0.31,), **options)
    for m in net.modules():  # statistics far from the initial 0 / 1, so a batch norm done wrong shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(-2, 2)
            m.bias.data.uniform_(-1, 1)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net.eval()


def _images(n: int = 37) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("channels_last", [True, False], ids=["NHWC", "NCHW"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_onednn_path_computes_the_plain_forward(case, channels_last):
    name = "fast" if "fast" in case else "cnn"
    net = _net(name, channels_last, **CASES[case])
    x = _images()
    with torch.no_grad():
        forward = net.inference_forward()
        assert forward is not net, "the oneDNN path should serve this model"
        torch.testing.assert_close(forward(x), net(x), rtol=1e-4, atol=1e-5)


def test_the_path_reads_the_weights_when_made():
    net = _net(channels=[4, 8], batch_norm=True)
    x = _images()
    with torch.no_grad():
        before = net.inference_forward()(x)
        net.features[0].weight.mul_(-1)
        net.features[1].running_mean.add_(1)
        after = net.inference_forward()(x)
        torch.testing.assert_close(after, net(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, after)


def test_evaluate_and_predict_take_the_path_and_give_the_plain_results(monkeypatch):
    data = synthetic_data(8, val=300, seed=2)
    net = _net("fast", **CASES["fast preset's shape"])
    calls = []
    conv = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or conv(*a))
    fast = evaluate(net, data.test, batch_size=128, tta_shift=1)
    logits = predict_logits(net, data.test.images, batch_size=128)
    assert calls, "evaluate did not run the oneDNN path"
    net.onednn_eval_on_cpu = False
    plain = evaluate(net, data.test, batch_size=128, tta_shift=1)
    torch.testing.assert_close(fast.probabilities, plain.probabilities, rtol=1e-4, atol=1e-6)
    assert torch.equal(fast.confusion, plain.confusion)
    assert fast.loss == pytest.approx(plain.loss, rel=1e-5)
    torch.testing.assert_close(logits, predict_logits(net, data.test.images, batch_size=128), rtol=1e-4, atol=1e-5)


def test_evaluate_puts_a_training_model_back_in_training_mode():
    data = synthetic_data(8, val=20, seed=2)
    net = _net().train()
    evaluate(net, data.test)
    assert net.training


def _serves(net: nn.Module) -> bool:
    return net.inference_forward() is not net


def test_the_plain_forward_serves_every_case_the_path_cannot():
    with torch.no_grad():
        assert _serves(_net())
        assert not _serves(_net("lenet", channels=[4, 8], hidden=[16])), "lenet is not marked for it"
        assert not _serves(_net().train()), "training mode: batch norm would use the batch's statistics"
        one_bn = _net(batch_norm=True)
        next(m for m in one_bn.modules() if isinstance(m, torch.nn.BatchNorm2d)).train()
        assert not _serves(one_bn), "one batch norm in training mode: the path used its running statistics"
        empty = torch.rand(0, 1, 28, 28)  # oneDNN raised "get_mkldnn_dtype: unsupported data type"
        assert _net(batch_norm=True).inference_forward()(empty).shape == (0, 10)
        assert not _serves(_net().double()), "float64 weights"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _serves(_net()), "autocast picks its own precision per op"
        res = _net("resnet18", width=0.125)
        res.onednn_eval_on_cpu = True
        assert not _serves(res), "ResNet blocks are not layers the path has"
        previous = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            assert not _serves(_net()), "oneDNN switched off by the user"
        finally:
            torch.backends.mkldnn.enabled = previous
    assert not _serves(_net()), "gradients on"


def test_forward_hooks_still_fire_during_evaluation():
    """Grad-CAM and feature probes hook the layers; the path would skip them, so a hooked model runs plainly."""
    data = synthetic_data(8, val=50, seed=2)
    net = _net()
    seen = []
    handle = net.features[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        evaluate(net, data.test, batch_size=25)
    finally:
        handle.remove()
    assert seen == [25, 25]


def test_a_big_model_is_evaluated_in_passes_whose_activations_stay_under_the_mmap_threshold(monkeypatch):
    # ResNet-18's largest activation at 500 images is about 100 MB: glibc mmapped it afresh on every pass and
    # the kernel faulted it in page by page (as long as the compute). Passes of fewer images give the same
    # results; the small CNNs keep their 500. Here at width 0.375 (a third of width 1's CPU time; its
    # largest activation, 24 x 28 x 28 floats, is 37.6 MB at 500 images, still over the 32 MiB threshold): 445
    # images a pass, so 460 images take two passes.
    import sys

    from mnistlab.training.allocator import MMAP_THRESHOLD

    module = sys.modules["mnistlab.training.evaluate"]
    torch.manual_seed(0)
    net = build_model("resnet18", num_classes=10, in_channels=1, image_size=(28, 28), mean=(0.13,), std=(0.31,),
                      width=0.375).eval()
    n = 460
    split = synthetic_data(2, val=n).test
    largest = []
    hooks = [m.register_forward_hook(lambda m, i, o: largest.append(o.numel() * o.element_size())) for m in net.modules()]
    with torch.no_grad():
        net(split.images[:1].float() / 255)
        for hook in hooks:
            hook.remove()
        rows = module.rows_per_pass(net, split.images[:1], 500)
        assert 1 <= rows < n and rows * max(largest) <= MMAP_THRESHOLD < (rows + 1) * max(largest)
        assert module.rows_per_pass(_net(), split.images[:1], 500) == 500
    passes = []
    monkeypatch.setattr(net, "forward", lambda x, f=net.forward: passes.append(x.shape[0]) or f(x))
    chunked = evaluate(net, split)
    assert passes[1:] == [rows, n - rows]  # the first pass is the one-image probe
    monkeypatch.setattr(module, "rows_per_pass", lambda model, image, batch_size: batch_size)
    whole = evaluate(net, split)
    assert torch.equal(chunked.predictions, whole.predictions) and chunked.accuracy == whole.accuracy
    torch.testing.assert_close(chunked.probabilities, whole.probabilities)
    torch.testing.assert_close(predict_logits(net, split.images), predict_logits(net, split.images, batch_size=1000))
