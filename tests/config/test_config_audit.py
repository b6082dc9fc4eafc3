import numpy as np
import pytest

from mnistlab.cli import _parser, _train_config
from mnistlab.config import Config, apply_overrides, config_to_toml, load_config
from mnistlab.errors import ConfigError


def _cli(*argv):
    return _train_config(_parser().parse_args(["train", *argv]))


def test_set_reads_a_float_as_the_flags_do():
    # `--lr .5` worked (argparse's float) and `--set optimizer.lr=.5` was "'.5' has the wrong type; expected float":
    # TOML wants a digit on both sides of the point.
    assert _cli("--set", "optimizer.lr=.5").optimizer.lr == _cli("--lr", ".5").optimizer.lr == 0.5
    cfg = apply_overrides(Config(), ["train.grad_clip=5.", "early_stopping.baseline=-.25", "train.max_minutes=1.e1"])
    assert (cfg.train.grad_clip, cfg.early_stopping.baseline, cfg.train.max_minutes) == (5.0, -0.25, 10.0)
    # read as a number, then checked as one; whole-number keys stay strict, and quoted text stays text
    with pytest.raises(ConfigError, match="optimizer.lr must be a finite number, got inf"):
        apply_overrides(Config(), ["optimizer.lr=Infinity"])
    for override, message in (("train.epochs=3.", "train.epochs = '3.' has the wrong type; expected int"),
                              ('optimizer.lr="0.5"', "optimizer.lr = '0.5' has the wrong type; expected float"),
                              ("optimizer.lr=0,5", "optimizer.lr = '0,5' has the wrong type; expected float")):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(Config(), [override])


def test_set_reads_true_and_false_in_any_case_and_asks_for_them_otherwise():
    # Python's True was "optimizer.nesterov = 'True' has the wrong type; expected bool", which it is.
    cfg = apply_overrides(Config(), ["optimizer.nesterov=True", "model.batch_norm=FALSE", "train.compile=tRuE"])
    assert (cfg.optimizer.nesterov, cfg.model.batch_norm, cfg.train.compile) == (True, False, True)
    for text in ("yes", "1", "on", '"true"'):
        with pytest.raises(ConfigError, match=r"has the wrong type; expected bool \(true or false\)"):
            apply_overrides(Config(), [f"optimizer.nesterov={text}"])
    with pytest.raises(ConfigError, match=r"expected bool or none \(true or false\)"):
        apply_overrides(Config(), ["model.batch_norm=yes"])
    # a text key still takes the word as typed
    assert apply_overrides(Config(), ["data.dir=True"]).data.dir == "True"


def test_numpy_numbers_from_the_python_api_are_taken_as_plain_numbers(tmp_path):
    # np.float64 was taken (a float subclass) but np.int64 (a seed from np.arange) and np.float32 were
    # "has the wrong type"; they are stored as int and float, so config.toml is still TOML.
    cfg = apply_overrides(Config(), {"train.seed": np.int64(3), "optimizer.lr": np.float32(0.25),
                                     "model.channels": list(np.array([8, 16]))})
    assert (cfg.train.seed, cfg.optimizer.lr, cfg.model.channels) == (3, 0.25, (8, 16))
    assert [type(v) for v in (cfg.train.seed, cfg.optimizer.lr, *cfg.model.channels)] == [int, float, int, int]
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg), encoding="utf-8")
    assert load_config(path) == cfg
    seed = apply_overrides(Config(), {"train.seed": np.uint64(2**32 - 1)}).train.seed  # the largest seed taken
    assert (seed, type(seed)) == (2**32 - 1, int)
    with pytest.raises(ConfigError, match="model.batch_norm = np.True_ has the wrong type"):  # not a number
        apply_overrides(Config(), {"model.batch_norm": np.bool_(True)})


def test_settings_apply_defaults_then_config_then_flags_then_set(tmp_path):
    # as README's Configuration section and `train --help` say, later ones winning
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 7\nbatch_size = 64\nreport = false\n[optimizer]\nlr = 0.3\n")
    cfg = _cli("--config", str(path), "--epochs", "3", "--lr", "0.2", "--set", "train.epochs=5")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.report, cfg.optimizer.lr) == (5, 64, False, 0.2)
