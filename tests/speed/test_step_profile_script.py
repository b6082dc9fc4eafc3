"""benchmarks/step_profile.py: its layer timer and its view-based max-pool, the two things its README row rests on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def step_profile():
    return load_benchmark("step_profile")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_view_pool_gives_pytorchs_outputs_and_gradients_with_ties(step_profile, dtype):
    g = torch.Generator().manual_seed(0)
    # Values from {0, 1, 2}: most 2x2 windows hold a tie, which PyTorch's pool sends to the window's first maximum.
    x = torch.randint(0, 3, (4, 8, 6, 6), generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(4, 8, 3, 3, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = step_profile.ViewMaxPool.apply(a), F.max_pool2d(b, 2)
    ours.backward(grad)
    theirs.backward(grad)
    assert torch.equal(ours, theirs)
    assert torch.equal(a.grad, b.grad)
    assert int((a.grad != 0).sum()) == grad.numel()  # one gradient per window, however many maxima it has


def test_the_first_layers_backward_ends_with_its_weights_gradients(step_profile):
    """Its input needs no gradient, so its backward hook fires as its backward begins: the end is the parameters'."""
    timer = step_profile.LayerTimer(epoch=1)
    timer.input_grad = {"0": False, "1": True}
    timer._backward_ends("0")
    timer._backward_ends("1", params=True)
    assert timer._end == {}
    timer._backward_ends("0", params=True)
    timer._backward_ends("1")
    assert set(timer._end) == {"0", "1"}


def test_layer_times_has_a_row_per_layer_and_the_rest(step_profile, monkeypatch):
    monkeypatch.setattr(step_profile, "BATCH", 32)
    monkeypatch.setattr(step_profile, "STEPS", 3)
    monkeypatch.setattr(step_profile, "ROUNDS", 1)
    monkeypatch.setattr(step_profile, "matmul_gflops", lambda: 100.0)
    timers = []
    timer_class = step_profile.LayerTimer
    monkeypatch.setattr(step_profile, "LayerTimer", lambda *a: timers.append(timer_class(*a)) or timers[-1])
    rows, plain_ms, hooked_ms, mm = step_profile.layer_times("fast", "fp32")
    # the training step's: only the first layer's input needs no gradient (validation's passes need none at all)
    assert timers[0].input_grad == {name: name != "features.0" for name in timers[0].layers}
    assert [r["layer"] for r in rows] == [
        "features.0", "features.1", "features.2", "features.3", "features.4", "features.5",
        "classifier.0", "classifier.1", "classifier.2", "the rest",
    ]
    assert rows[0]["what"] == "conv 1->24 5x5" and rows[1]["what"] == "max-pool 2x2"
    for r in rows[:-1]:  # every layer was timed both ways
        assert r["fwd ms"] > 0 and r["bwd ms"] > 0, r
    # FLOPs only where there are MACs
    timed = [r["what"] for r in rows if isinstance(r["GFLOP/s"], int)]
    assert timed == ["conv 1->24 5x5", "conv 24->32 3x3", "linear 800->256", "linear 256->10"]
    assert plain_ms > 0 and hooked_ms > 0 and mm == 100.0


@pytest.mark.parametrize("block", ["im2col_block", "polyphase_block"])
def test_the_first_block_alternatives_compute_the_layers_outputs_and_gradients(step_profile, block):
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(1, 6, 5)
    # A blank top half, as MNIST's background: every pool window there is a tie (the bias at all four positions),
    # whose gradient goes to the window's first position, as max_pool2d sends it.
    x = torch.rand(3, 1, 16, 16, generator=g)
    x[:, :, :8] = 0
    grad = torch.randn(3, 6, 6, 6, generator=g)
    outputs, grads = [], []
    for f in (step_profile.layers_block, getattr(step_profile, block)):
        conv.zero_grad(set_to_none=True)
        y = f(x, conv.weight, conv.bias)
        y.backward(grad)
        outputs.append(y.detach())
        grads.append((conv.weight.grad.clone(), conv.bias.grad.clone()))
    assert outputs[1].shape == outputs[0].shape == (3, 6, 6, 6)
    torch.testing.assert_close(outputs[1], outputs[0])
    for ours, theirs in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, theirs)
    assert (outputs[0] == 0).any() and (outputs[0] > 0).any()  # the ReLU's mask is part of what is compared


def test_the_polyphase_weight_places_the_kernel_at_each_window_position(step_profile):
    """Group (a, b) of the polyphase conv, on the unshuffled image, is the kernel's conv read at (2i + a, 2j + b)."""
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(2, 1, 5, 5, generator=g), torch.randn(1, 1, 14, 14, generator=g)
    direct = F.conv2d(x, w)  # 10 x 10
    phased = F.conv2d(F.pixel_unshuffle(x, 2), step_profile.polyphase_weight(w))  # (1, 8, 5, 5)
    for group, (a, b) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        torch.testing.assert_close(phased[:, 2 * group:2 * group + 2], direct[:, :, a::2, b::2])
