"""What mnistlab's calls leave changed in the caller's process, and what the caller's process state does to them."""

from __future__ import annotations

import signal

import pytest
import torch

from mnistlab import Callback, Config, TrainingInterrupted, apply_overrides, build_model, fit, train


def _cfg(mnist_root, *more: str) -> Config:
    return apply_overrides(Config(), [
        "data.train_limit=300", "data.val_size=200", "model.name=cnn", "model.width=0.25", "train.epochs=1",
        "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
        "train.threads=1", "train.batch_size=64", "tensorboard.enabled=false", "train.report=false",
        "train.progress=false", f"data.dir={mnist_root}", "data.download=false", *more])


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_fit_trains_inside_the_callers_no_grad_block(mnist_small, mode):
    """A notebook cell under `with torch.no_grad():` (or inference_mode) failed in fit()'s first step with
    PyTorch's "element 0 of tensors does not require grad"; the caller's mode is its own again afterwards."""
    model = build_model("cnn", width=0.25, mean=mnist_small.mean, std=mnist_small.std)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    block = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with block:
        result = fit(model, mnist_small, apply_overrides(Config(), ["train.epochs=1", "train.threads=1",
                                                                    "train.progress=false"]))
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (mode == "inference_mode")
    assert result.steps > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_train_inside_the_callers_inference_mode(mnist_root, tmp_path):
    """train() builds its model and loads its data itself: under the caller's inference_mode its weights were
    inference tensors, which cannot train."""
    with torch.inference_mode():
        result = train(_cfg(mnist_root), out=tmp_path / "run", quiet=True)
        assert torch.is_inference_mode_enabled()
    assert result.summary["steps"] > 0 and result.summary["test_accuracy"] > 0.1


class _CtrlC(Callback):
    """Ctrl-C (SIGINT sent to this process) after the third step."""

    def on_batch_end(self, step, metrics, trainer) -> None:
        if step == 3:
            signal.raise_signal(signal.SIGINT)


class _Boom(Callback):
    def on_epoch_end(self, epoch, metrics, trainer) -> None:
        raise RuntimeError("boom")


def _state() -> dict:
    return {"threads": torch.get_num_threads(), "rng": torch.random.get_rng_state(), "grad": torch.is_grad_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "signals": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]}


def test_interrupted_and_failed_runs_leave_the_process_as_they_found_it(mnist_root, tmp_path):
    """After a Ctrl-C'd run and one a callback failed, the process has its thread count, random stream,
    deterministic setting and signal handlers back, and a run then trains the same weights as the first."""
    torch.manual_seed(123)
    first = train(_cfg(mnist_root), out=tmp_path / "first", quiet=True)
    other = ["train.threads=2", "train.deterministic=true"]
    for name, callback, error in (("ctrl-c", _CtrlC(), TrainingInterrupted), ("boom", _Boom(), RuntimeError)):
        state = _state()
        with pytest.raises(error):
            train(_cfg(mnist_root, *other), out=tmp_path / name, quiet=True, callbacks=[callback])
        after = _state()
        assert torch.equal(after.pop("rng"), state.pop("rng")), name
        assert after == state, name
        assert not (tmp_path / name / "run.lock").exists()
    again = train(_cfg(mnist_root), out=tmp_path / "again", quiet=True)
    a, b = first.fit.model.state_dict(), again.fit.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reuse_memory_off_after_a_run_with_it_on_is_warned(mnist_root, tmp_path, capsys):
    """glibc's malloc settings of train.reuse_memory outlive the run: a later run with it off in the same process
    trained under them without a word (a notebook's comparison of the two measured nothing)."""
    from mnistlab.training import allocator

    train(_cfg(mnist_root, "train.reuse_memory=true"), out=tmp_path / "on", quiet=True)
    if not allocator.reuse_freed_memory():
        pytest.skip("malloc here is not glibc's: nothing is kept")
    capsys.readouterr()
    train(_cfg(mnist_root, "train.reuse_memory=false"), out=tmp_path / "off", quiet=True)
    err = capsys.readouterr().err
    assert "train.reuse_memory = false, but an earlier run in this process" in err


def test_fit_with_reuse_memory_off_after_a_run_with_it_on_is_warned(mnist_small):
    # as train() says it (above); fit() trained under the kept setting without a word
    from mnistlab.training import allocator

    cfg = apply_overrides(Config(), ["train.epochs=1", "train.threads=1", "train.progress=false",
                                     "train.max_steps=2"])
    fit(build_model("cnn", width=0.25), mnist_small, apply_overrides(cfg, ["train.reuse_memory=true"]))
    if not allocator.reuse_freed_memory():
        pytest.skip("malloc here is not glibc's: nothing is kept")
    with pytest.warns(UserWarning, match=r"^train.reuse_memory = false, but an earlier run in this process"):
        fit(build_model("cnn", width=0.25), mnist_small, apply_overrides(cfg, ["train.reuse_memory=false"]))


@pytest.mark.parametrize("started", [True, False], ids=["cuda-started-before", "cuda-started-in-the-run"])
def test_the_gpus_random_states_come_back_too(monkeypatch, started):
    # A run's torch.manual_seed(train.seed) seeds the GPUs' generators as well: after train() on a GPU the caller's
    # torch.randn(3, device="cuda") followed the run's seed, not the caller's. (No GPU here: torch.cuda is faked.)
    from mnistlab.training.run import process_state_kept

    calls, cuda = [], {"started": started}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda["started"])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["the caller's state"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(("set", states)))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(("seed", seed)))
    torch.manual_seed(1234)  # (torch.manual_seed calls torch.cuda.manual_seed_all)
    calls.clear()
    with process_state_kept():
        torch.manual_seed(0)  # as the run seeds
        cuda["started"] = True  # by its first CUDA tensor
    assert calls == [("seed", 0), ("set", ["the caller's state"]) if started else ("seed", 1234)]
    assert torch.initial_seed() == 1234
