"""The optimizers of [optimizer]: each key reaches PyTorch's optimizer, unset keys mean its own defaults, and
RMSprop and Adadelta train and resume as the others do."""

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
           "adam": torch.optim.Adam([torch.zeros(1)])}
    for name, keys in {"rmsprop": ("alpha", "eps", "momentum", "centered", "weight_decay"),
                       "adadelta": ("rho", "eps", "weight_decay"), "adam": ("eps", "weight_decay")}.items():
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
        "train.batch_size=64", "train.threads=1", "tensorboard.enabled=false", "train.epochs=1", *overrides])


@pytest.mark.parametrize("optimizer", [["optimizer.name=rmsprop", "optimizer.lr=0.002"],
                                       ["optimizer.name=adadelta", "optimizer.lr=1.0"]])
def test_rmsprop_and_adadelta_learn_mnist(mnist_root, tmp_path, optimizer):
    # 2,000 real images, one epoch: a classifier that guesses stays near 10%.
    result = train(small(mnist_root, *optimizer), out=tmp_path / "run", quiet=True)
    assert result.fit.history[-1]["val_accuracy"] > 0.8  # 87% here


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
        "optimizer.eps = 1e-08 is not used by the sgd optimizer (it is read by adam, adamw, rmsprop and adadelta "
        "only)"]
