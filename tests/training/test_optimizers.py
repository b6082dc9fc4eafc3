"""The optimizers of [optimizer]: each key reaches PyTorch's optimizer, unset keys mean its own defaults, and
NAdam, Adamax, RMSprop, Adadelta and Adagrad train and resume as SGD and Adam do."""

import pytest
import torch

from mnistlab.config import Config, apply_overrides
from mnistlab.errors import ConfigError
from mnistlab.training import read_checkpoint, train
from mnistlab.training.optim import build_optimizer
from mnistlab.training.run import settings_warnings


def built(*overrides):
    cfg = apply_overrides(Config(), list(overrides)).optimizer
    return build_optimizer(torch.nn.Linear(2, 2).parameters(), cfg, torch.device("cpu"))


def test_unset_keys_take_each_optimizers_own_defaults():
    own = {"rmsprop": torch.optim.RMSprop([torch.zeros(1)]), "adadelta": torch.optim.Adadelta([torch.zeros(1)]),
           "adam": torch.optim.Adam([torch.zeros(1)]), "nadam": torch.optim.NAdam([torch.zeros(1)]),
           "adamax": torch.optim.Adamax([torch.zeros(1)]), "adagrad": torch.optim.Adagrad([torch.zeros(1)])}
    for name, keys in {"rmsprop": ("alpha", "eps", "momentum", "centered", "weight_decay"),
                       "adadelta": ("rho", "eps", "weight_decay"), "adam": ("eps", "weight_decay"),
                       "nadam": ("eps", "weight_decay", "momentum_decay"), "adamax": ("eps", "weight_decay"),
                       "adagrad": ("eps", "weight_decay", "lr_decay", "initial_accumulator_value")}.items():
        opt = built(f"optimizer.name={name}", "optimizer.lr=0.5")
        assert type(opt) is type(own[name])
        assert {k: opt.defaults[k] for k in keys} == {k: own[name].defaults[k] for k in keys}, name
    # Adadelta's eps is not Adam's: a 100x smaller one made its first steps 10x smaller.
    assert built("optimizer.name=adadelta").defaults["eps"] == 1e-6
    # SGD keeps the presets' momentum, not PyTorch's 0
    assert built("optimizer.name=sgd").defaults["momentum"] == 0.9


def test_the_keys_set_reach_the_optimizer():
    rms = built("optimizer.name=rmsprop", "optimizer.lr=0.002", "optimizer.rho=0.5", "optimizer.momentum=0.3",
                "optimizer.centered=true", "optimizer.eps=1e-5", "optimizer.weight_decay=0.1").defaults
    assert (rms["lr"], rms["alpha"], rms["momentum"], rms["centered"], rms["eps"], rms["weight_decay"]) == (
        0.002, 0.5, 0.3, True, 1e-5, 0.1)
    ada = built("optimizer.name=adadelta", "optimizer.lr=1.0", "optimizer.rho=0.95", "optimizer.eps=1e-7").defaults
    assert (ada["lr"], ada["rho"], ada["eps"]) == (1.0, 0.95, 1e-7)
    for name in ("nadam", "adamax"):
        own = built(f"optimizer.name={name}", "optimizer.lr=0.003", "optimizer.betas=[0.8, 0.95]",
                    "optimizer.eps=1e-6", "optimizer.weight_decay=0.2").defaults
        assert (own["lr"], own["betas"], own["eps"], own["weight_decay"]) == (0.003, (0.8, 0.95), 1e-6, 0.2), name
    grad = built("optimizer.name=adagrad", "optimizer.lr=0.05", "optimizer.eps=1e-7", "optimizer.weight_decay=0.1")
    assert (grad.defaults["lr"], grad.defaults["eps"], grad.defaults["weight_decay"]) == (0.05, 1e-7, 0.1)
    assert built("optimizer.name=sgd", "optimizer.momentum=0").defaults["momentum"] == 0


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.rho=1.0", r"optimizer.rho must be in \[0, 1\), got 1.0"),
    ("optimizer.rho=-0.5", "optimizer.rho must be zero or more, got -0.5"),
    ("optimizer.rho=nan", "optimizer.rho must be a finite number"),
])
def test_a_bad_rho_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), ["optimizer.name=rmsprop", override])


def test_nesterov_counts_sgds_default_momentum():
    assert apply_overrides(Config(), ["optimizer.name=sgd", "optimizer.nesterov=true"]).optimizer.nesterov
    with pytest.raises(ConfigError, match="optimizer.nesterov needs optimizer.momentum > 0"):
        apply_overrides(Config(), ["optimizer.name=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"])
    # RMSprop reads momentum (default 0) but not nesterov: that is the unread key's warning, not this refusal
    rmsprop = apply_overrides(Config(), ["optimizer.name=rmsprop", "optimizer.nesterov=true"])
    assert settings_warnings(rmsprop) == [
        "optimizer.nesterov = True is not used by the rmsprop optimizer (it is read by sgd only)"]


def test_keys_another_optimizer_reads_are_warned_about():
    assert settings_warnings(apply_overrides(Config(), ["optimizer.rho=0.5", "optimizer.centered=true"])) == [
        "optimizer.rho = 0.5 is not used by the adam optimizer (it is read by rmsprop and adadelta only)",
        "optimizer.centered = True is not used by the adam optimizer (it is read by rmsprop only)",
    ]
    assert settings_warnings(apply_overrides(Config(), ["optimizer.name=adadelta", "optimizer.momentum=0.5"])) == [
        "optimizer.momentum = 0.5 is not used by the adadelta optimizer (it is read by sgd and rmsprop only)"]
    assert settings_warnings(apply_overrides(Config(), ["optimizer.name=rmsprop", "optimizer.momentum=0.5",
                                                        "optimizer.rho=0.9", "optimizer.eps=1e-6"])) == []


def small(root, *overrides):
    return apply_overrides(Config(), [
        f"data.dir={root}", "data.train_limit=2000", "data.val_size=500", "model.name=cnn", "model.width=0.5",
        "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
        "train.batch_size=64", "train.threads=1", "tensorboard.enabled=false", "train.epochs=1", *overrides])


@pytest.mark.parametrize("optimizer", [["optimizer.name=rmsprop", "optimizer.lr=0.002"],
                                       ["optimizer.name=adadelta", "optimizer.lr=1.0"],
                                       ["optimizer.name=nadam", "optimizer.lr=0.004"],
                                       ["optimizer.name=adamax", "optimizer.lr=0.01"],
                                       ["optimizer.name=adagrad", "optimizer.lr=0.02"]])
def test_each_optimizer_learns_mnist(mnist_root, tmp_path, optimizer):
    # 2,000 real images, one epoch: a classifier that guesses stays near 10%.
    result = train(small(mnist_root, *optimizer), out=tmp_path / "run", quiet=True)
    assert result.fit.history[-1]["val_accuracy"] > 0.8  # 87-89% here (adamax at lr 0.004: 81%)


@pytest.mark.parametrize("name", ["nadam", "adamax", "adagrad"])
def test_a_resumed_run_trains_on_as_one_that_was_not_stopped(mnist_root, tmp_path, name):
    # NAdam keeps a scalar tensor per parameter (mu_product) beside its moments: the resume's check of the
    # optimizer state took it for a moment of the wrong shape and refused every NAdam checkpoint.
    cfg = small(mnist_root, f"optimizer.name={name}", "optimizer.lr=0.004", "data.train_limit=600",
                "schedule.name=constant", "train.epochs=2")
    whole = train(cfg, out=tmp_path / "whole", quiet=True)
    train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "parts", quiet=True)
    resumed = train(cfg, resume=tmp_path / "parts", quiet=True)
    assert [row["epoch"] for row in resumed.fit.history] == [1, 2]
    a, b = (read_checkpoint(tmp_path / run / "last.ckpt") for run in ("whole", "parts"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_rmsprop_resumed_with_momentum_or_centered_newly_on_trains(mnist_root, tmp_path):
    # PyTorch makes RMSprop's velocity and mean-gradient buffers in a parameter's first step only: a resume that
    # turned momentum or centered on failed in its first step with KeyError 'momentum_buffer'.
    cfg = small(mnist_root, "optimizer.name=rmsprop", "optimizer.lr=0.002", "data.train_limit=600",
                "schedule.name=constant")
    train(cfg, out=tmp_path / "run", quiet=True)
    more = apply_overrides(cfg, ["train.epochs=2", "optimizer.momentum=0.5", "optimizer.centered=true"])
    result = train(more, resume=tmp_path / "run", quiet=True)
    assert [row["epoch"] for row in result.fit.history] == [1, 2]
    state = read_checkpoint(tmp_path / "run" / "last.ckpt")["optimizer"]["state"]
    assert state and all({"square_avg", "momentum_buffer", "grad_avg"} <= set(s) for s in state.values())
    assert all(torch.isfinite(s["momentum_buffer"]).all() and s["momentum_buffer"].abs().sum() > 0
               for s in state.values())


def test_config_toml_records_what_an_unset_optimizer_key_trained_with():
    from mnistlab.config import config_to_toml

    text = config_to_toml(apply_overrides(Config(), ["optimizer.name=adadelta", "optimizer.rho=0.95"]))
    section = text.split("[optimizer]\n")[1].split("\n\n")[0].splitlines()
    assert "rho = 0.95" in section and "# eps = (default: 1e-06, adadelta's)" in section
    assert "# momentum = (default)" in section  # adadelta has none


def test_runs_stored_before_the_optimizers_own_defaults_resume_without_warnings(mnist_root, tmp_path, capsys):
    # Until 2fb7d32 every config.toml and checkpoint stored momentum 0.9 and eps 1e-8: resuming an Adam run
    # warned that Adam does not read momentum. Read as unset, they must not count as a change of settings
    # either: an early-stopped run resumed as it was stays stopped.
    from mnistlab.cli import main
    from mnistlab.training import save_checkpoint

    cfg = small(mnist_root, "data.train_limit=300", "train.epochs=4", "early_stopping.criterion=patience",
                "early_stopping.patience=1", "early_stopping.min_delta=100", "schedule.name=constant")
    run = tmp_path / "run"
    assert train(cfg, out=run, quiet=True).summary["epochs"] == 2
    payload = read_checkpoint(run / "last.ckpt")
    optimizer = {k: v for k, v in payload["config"]["optimizer"].items() if k not in ("rho", "centered")}
    payload["config"] = {**payload["config"], "optimizer": {**optimizer, "momentum": 0.9, "eps": 1e-8}}
    save_checkpoint(run / "last.ckpt", payload)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert [row["epoch"] for row in read_checkpoint(run / "last.ckpt")["history"]] == [1, 2]


def test_a_key_the_optimizer_does_not_read_is_warned_about_at_any_value():
    # momentum 0.9 and eps 1e-8 were let through as "the old defaults", whatever config they came from: a
    # preset's SGD momentum with --optimizer adadelta was dropped without a word
    assert settings_warnings(apply_overrides(Config(), ["optimizer.name=adadelta", "optimizer.momentum=0.9"])) == [
        "optimizer.momentum = 0.9 is not used by the adadelta optimizer (it is read by sgd and rmsprop only)"]
    assert settings_warnings(apply_overrides(Config(), ["optimizer.name=sgd", "optimizer.eps=1e-8"])) == [
        "optimizer.eps = 1e-08 is not used by the sgd optimizer (it is read by adam, adamw, nadam, adamax, rmsprop, "
        "adadelta and adagrad only)"]


def test_nadams_mu_product_is_checked_as_one_number():
    from mnistlab.errors import CheckpointError
    from mnistlab.training.fit import _check_optimizer_state

    opt = built("optimizer.name=nadam")
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    _check_optimizer_state(opt)  # as NAdam keeps it: a 0-d tensor
    first = opt.param_groups[0]["params"][0]
    opt.state[first]["mu_product"] = torch.ones(3)
    with pytest.raises(CheckpointError, match="mu_product of parameter 0 is \\(3,\\)"):
        _check_optimizer_state(opt)


def foreach_instead(params, cfg, device):
    """build_optimizer's optimizer, rebuilt on PyTorch's multi-tensor path instead of its fused kernel."""
    opt = build_optimizer(params, cfg, device)
    assert opt.defaults["fused"] is True
    return type(opt)(opt.param_groups[0]["params"], **{**opt.defaults, "fused": False, "foreach": True})


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_the_fused_step_trains_as_the_multi_tensor_one(mnist_root, tmp_path, monkeypatch, name, precision):
    # The fused kernels run SGD, Adagrad and Adam on the CPU in 0.3-0.7x the time (fused_optimizers.py); in
    # fp16 the loss scale hands them its scale and overflow flag instead of unscaling the gradients first.
    import sys

    fit = sys.modules["mnistlab.training.fit"]  # the package's `fit` is the function of that name
    lr = {"sgd": 0.05, "adagrad": 0.02, "adam": 0.01}[name]
    cfg = small(mnist_root, f"optimizer.name={name}", f"optimizer.lr={lr}", "data.train_limit=600", "train.epochs=2",
                "schedule.name=constant", f"train.precision={precision}", "optimizer.weight_decay=0.001",
                *(["optimizer.nesterov=true"] if name == "sgd" else []))
    fused = train(cfg, out=tmp_path / "fused", quiet=True)
    monkeypatch.setattr(fit, "build_optimizer", foreach_instead)
    plain = train(cfg, out=tmp_path / "plain", quiet=True)
    a, b = (read_checkpoint(tmp_path / run / "last.ckpt")["model"] for run in ("fused", "plain"))
    assert fused.summary.get("skipped_steps") == plain.summary.get("skipped_steps")
    assert fused.summary["test_accuracy"] > 0.5 and plain.summary["test_accuracy"] > 0.5  # 10 classes, 20 steps
    if precision == "fp32":
        # 0.2-3e-7 apart on the Xeon and the AVX2 EPYC. On the AVX-512 EPYC, Adam's 14th step took a gradient
        # 6e-5 off, a max-pool or ReLU flipped by the steps' 1e-7 rounding differences, and the runs ended 1.7e-5
        # apart (a standalone loop of the two steps on the same gradients stays 1e-7 apart). A fused step that
        # computed something else (weight decay, nesterov) would be off by a fraction of lr, 1e-3 and more.
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-4) for k in a)
    else:  # fp16's rounding of the weights in the forward pass turns differences of 1e-8 into 1e-3 (Adam)
        assert abs(fused.summary["test_accuracy"] - plain.summary["test_accuracy"]) < 0.01


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_a_resume_in_another_memory_layout_trains_on_as_the_run_would(mnist_root, tmp_path, name):
    # train.channels_last may change on resume; the checkpoint's moments stay in the layout they were saved in. The
    # fused kernels pair a parameter's elements with its state's in storage order: resumed in channels-last from
    # an NCHW run, the step mixed other elements' moments in (SGD's weights 4e-3 off, Adagrad's 3e-2).
    cfg = small(mnist_root, f"optimizer.name={name}", "optimizer.lr=0.02", "data.train_limit=600",
                "schedule.name=constant", "train.precision=fp32", "train.epochs=2", "train.channels_last=false")
    train(cfg, out=tmp_path / "whole", quiet=True)
    train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "parts", quiet=True)
    train(apply_overrides(cfg, ["train.channels_last=true"]), resume=tmp_path / "parts", quiet=True)
    a, b = (read_checkpoint(tmp_path / run / "last.ckpt")["model"] for run in ("whole", "parts"))
    # the layouts' float rounding: up to 1.5e-5 apart here
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 2e-4


def test_sgds_first_step_skipped_by_the_fp16_loss_scale_leaves_its_momentum_at_zero(mnist_root):
    # PyTorch's fused SGD makes the momentum with torch.empty_like in its first step and leaves it so when the loss
    # scale skips that step: the next one added whatever that memory held to the weights (1e19, then a NaN loss).
    from mnistlab import build_model, load_data
    from mnistlab.training.fit import Trainer

    cfg = small(mnist_root, "optimizer.name=sgd", "optimizer.lr=0.01", "train.precision=fp16", "data.train_limit=512",
                "data.val_size=256", "schedule.name=constant")
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, num_classes=10, mean=data.mean, std=data.std, **cfg.model.options())
    with torch.no_grad():
        model.classifier[-1].weight.mul_(100)  # large logits: the first steps' gradients overflow in fp16
    trainer = Trainer(model, data, cfg)
    result = trainer.fit()
    assert trainer.skipped_steps >= 1
    assert result.stopped_by == "max_epochs", result.stop_reason
    assert all(torch.isfinite(p).all() and p.abs().max() < 100 for p in model.parameters())
