"""Gradient checkpointing changes memory, not results: same gradients, same BN statistics, same RNG stream."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mnistlab.models.checkpointing as checkpointing
from mnistlab.models import build_model, list_models, model_options
from mnistlab.models.checkpointing import segments

# Narrow models; dropout and batch norm on wherever a model takes them, since those are what could differ.
OPTIONS = {
    "resnet18": {"width": 0.125, "dropout": 0.3},
    "vgg11": {"width": 0.125, "hidden": [16], "dropout": 0.5},
    "cnn": {"hidden": [32], "dropout": 0.3, "batch_norm": True, "width": 0.5},
}


def small(name: str) -> dict:
    if name in OPTIONS:
        return OPTIONS[name]
    opts = {k: v for k, v in {"width": 0.125, "hidden": [16], "dropout": 0.2, "batch_norm": True}.items()
            if k in model_options(name)}
    if name == "vgg":
        opts["channels"] = [8, "M", 16, "M"]
    return opts


def one_step(model, x, y):
    """A training step as the Trainer takes it; returns gradients, state after the step and the next random draw."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return grads, {k: v.clone() for k, v in model.state_dict().items()}, torch.rand(3)


def plain_and_checkpointed(name, batch=8):
    torch.manual_seed(0)
    plain = build_model(name, **small(name)).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    return one_step(plain, x, y), one_step(ckpt, x, y), ckpt


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "cnn"])
def test_identical_gradients_bn_statistics_and_rng(name):
    (g1, s1, r1), (g2, s2, r2), _ = plain_and_checkpointed(name)
    assert_same(g1, g2)
    assert_same(s1, s2)  # weights after the step, BN running_mean / running_var / num_batches_tracked
    assert torch.equal(r1, r2)  # the global RNG stream continues as without checkpointing
    bn = next(k for k in s1 if k.endswith("running_mean"))
    assert not torch.equal(s1[bn], torch.zeros_like(s1[bn]))  # the statistics did move (once)


@pytest.mark.parametrize("name", [m for m in list_models() if m not in OPTIONS])
def test_every_zoo_model_gets_the_same_gradients(name):
    (g1, s1, _), (g2, s2, _), _ = plain_and_checkpointed(name, batch=4)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=0, atol=0, msg=k)
    assert_same(s1, s2)


def test_without_restoring_the_statistics_the_recompute_would_move_them_twice(monkeypatch):
    """The BN guard matters: with it switched off, running stats after a checkpointed step differ."""
    monkeypatch.setattr(checkpointing, "keep_running_stats", lambda layers: contextlib.nullcontext())
    (_, s1, _), (_, s2, _), _ = plain_and_checkpointed("resnet18")
    assert s1["features.stem.1.num_batches_tracked"] == 1
    assert s2["features.stem.1.num_batches_tracked"] == 2
    assert not torch.equal(s1["features.stem.1.running_mean"], s2["features.stem.1.running_mean"])


def count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_it_recomputes_in_training_only():
    torch.manual_seed(0)
    model = build_model("cnn", **small("cnn"))
    model.set_grad_checkpointing(True)
    calls = count_calls(model.features[0])
    x = torch.rand(4, 1, 28, 28)

    model.train()
    model(x).sum().backward()
    assert calls[0] == 2  # forward, then the recompute in backward

    calls[0] = 0
    with torch.no_grad():
        model(x)
    model.eval()
    out = model(x)
    out.sum().backward()
    assert calls[0] == 2  # once each: no_grad and eval run features as usual
    model.set_grad_checkpointing(False)
    assert torch.equal(out, model(x))


def test_segments_cover_features_in_order():
    resnet = build_model("resnet18", width=0.125)
    segs = segments(resnet.features)
    assert [type(s[0]).__name__ for s in segs] == ["Conv2d"] + ["BasicBlock"] * 8  # stem, then each block
    assert isinstance(segs[-1][-1], nn.AdaptiveAvgPool2d)
    vgg = build_model("vgg11", width=0.125)
    segs = segments(vgg.features)
    assert [m for s in segs for m in s] == list(vgg.features)
    assert all(isinstance(s[0], nn.Conv2d) for s in segs) and len(segs) == 8


def test_the_trainer_turns_it_on_and_a_run_is_unchanged(mnist_small):
    from mnistlab.config import Config, apply_overrides
    from mnistlab.training import Trainer

    cfg = apply_overrides(Config(), ["model.name=cnn", "train.epochs=1", "train.batch_size=250", "train.threads=1",
                                     "train.progress=false"])
    results = []
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model("cnn", mean=mnist_small.mean, std=mnist_small.std, **small("cnn"))
        trainer = Trainer(model, mnist_small, apply_overrides(cfg, {"train.grad_checkpoint": on}))
        assert model.grad_checkpointing is on
        results.append((trainer.fit().history[0], trainer.get_weights()))
    (h1, w1), (h2, w2) = results
    assert {k: v for k, v in h1.items() if k != "seconds"} == {k: v for k, v in h2.items() if k != "seconds"}
    assert_same(w1, w2)


def test_under_torch_compile_it_trains_as_the_plain_model_and_moves_the_statistics_once():
    # train.compile: dynamo cannot trace the context_fn that puts the statistics back, and the compiled
    # backward recomputes values only, so checkpointed_features leaves it out there.
    import torch._inductor.config

    torch.manual_seed(0)
    plain = build_model("cnn", **small("cnn")).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    g1, s1, r1 = one_step(plain, x, y)
    compiled = torch.compile(ckpt)
    with torch._inductor.config.patch(fallback_random=True):  # dropout masks drawn as in eager mode
        g2, s2, r2 = one_step(compiled, x, y)
    prefix = "_orig_mod."  # torch.compile's wrapper names the model's tensors under this
    assert {k.removeprefix(prefix) for k in g2} == g1.keys()
    for k in g1:
        torch.testing.assert_close(g2[prefix + k], g1[k], rtol=1e-4, atol=1e-6, msg=k)
    for k in s1:  # BN's num_batches_tracked is 1 and running_mean moved once, as in the plain step
        torch.testing.assert_close(s2[prefix + k], s1[k], rtol=1e-4, atol=1e-6, msg=k)
    assert torch.equal(r1, r2)
