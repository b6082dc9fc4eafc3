"""The sweep file: every mistake is refused before any training, with a message that says what to do."""

from __future__ import annotations

import pytest

from mnistlab.config import Config, apply_overrides, load_config
from mnistlab.errors import ConfigError
from mnistlab.sweep import apply_params, grid_points, load_sweep, sweep_from_dict

LR = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def sweep(params=None, base=None, **keys):
    return sweep_from_dict({**(base or {}), "sweep": {**keys, "params": LR if params is None else params}})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="bayes"), "sweep.sampler = 'bayes' is not valid; choose one of: tpe, random, grid"),
        (dict(pruner="asha"), "sweep.pruner = 'asha' is not valid; choose one of: none, median, hyperband, early_stopping"),
        (dict(objective="test_accuracy"), "sweep.objective = 'test_accuracy' is not valid; choose one of: val_accuracy"),
        (dict(direction="up"), "sweep.direction = 'up' is not valid; choose one of: maximize, minimize"),
        (dict(trails=3), "unknown key(s) sweep.trails; valid keys in [sweep]: sampler, trials, objective"),
        (dict(trials=0), "sweep.trials must be an integer of 1 or more, got 0"),
        (dict(workers=1.5), "sweep.workers must be an integer of 1 or more, got 1.5"),
        (dict(storage="study.db"), "sweep.storage = 'study.db' is not a database URL"),
        (dict(params={}), "[sweep.params] is missing or empty"),
        (dict(params={"optimizer.lrr": [0.1, 0.2]}),
         "sweep.params.\"optimizer.lrr\": unknown key 'optimizer.lrr'; valid keys in [optimizer]: name, lr"),
        (dict(params={"optim.lr": [0.1]}), "unknown section 'optim' in override 'optim.lr'; valid sections: model"),
        (dict(params={"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.01}}),
         "sweep.params.\"optimizer.lr\": low must be below high, got low = 0.1 and high = 0.01"),
        (dict(params={"optimizer.lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}}),
         "log = true needs low > 0, got low = 0.0"),
        (dict(params={"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}),
         "type = 'loguniform' is not valid; choose one of: float, int, categorical"),
        (dict(params={"optimizer.lr": {"type": "float", "low": 1e-4, "hi": 1e-2}}),
         "unknown key(s) hi for type float; valid keys: high, log, low, step, type"),
        (dict(params={"train.epochs": {"type": "int", "low": 1, "high": 2.5}}), "high must be an integer, got 2.5"),
        (dict(params={"train.epochs": {"type": "float", "low": 1, "high": 2}}),  # whole bounds, float samples
         "sweep.params.\"train.epochs\": train.epochs = 1.0 has the wrong type; expected int"),
        (dict(params={"train.epochs": [1, "two"]}),
         "sweep.params.\"train.epochs\": train.epochs = 'two' has the wrong type; expected int"),
        (dict(params={"train.batch_size": {"type": "int", "low": 0, "high": 64}}),
         "train.batch_size must be greater than zero, got 0"),
        (dict(params={"optimizer.name": {"type": "categorical", "choices": ["adam", "lbfgs"]}}),
         "optimizer.name = 'lbfgs' is not valid; choose one of: sgd, adam, adamw, nadam, adamax, rmsprop, adadelta, adagrad"),
        (dict(params={"train.batch_size": [64, 64]}), "choices repeat a value: [64, 64]"),
        (dict(sampler="grid"), "sweep.params.\"optimizer.lr\": the grid sampler needs a list of values"),
        (dict(sampler="grid", trials=3, params={"train.batch_size": [64, 128]}),
         "sweep.trials = 3 but the grid has only 2 points"),
        (dict(pruner="early_stopping"), "[early_stopping] criterion is \"none\"; set one"),
        (dict(objective="ema_val_accuracy"), "sweep.objective = 'ema_val_accuracy' needs [ema] enabled = true"),
        (dict(trials=1, workers=2), "sweep.workers = 2 but the sweep has 1 trial(s); use at most 1"),
        (dict(direction="minimize"), "sweep.direction = 'minimize' contradicts sweep.objective = 'val_accuracy', "
                                     "which is better higher; leave direction out"),
        (dict(objective="val_loss", direction="maximize"), "contradicts sweep.objective = 'val_loss'"),
        (dict(params={"optimizer.lr": [1, 1.0]}), "choices repeat a value: [1, 1.0]"),
        (dict(trials=50, workers=100), "sweep.workers = 100 but the sweep has 50 trial(s)"),
        # ranked together, trials on other validation images (or another dataset) say nothing of each other
        (dict(params={"data.dataset": ["mnist", "kmnist"]}), "sweep.params.\"data.dataset\" cannot be searched: a "
                                                           "sweep ranks its trials on one dataset's validation images"),
        (dict(params={"data.val_size": [1000, 5000]}), "\"data.val_size\" cannot be searched: each value validates"),
        (dict(params={"data.split_seed": [0, 1]}), "\"data.split_seed\" cannot be searched"),
    ],
)
def test_bad_sweeps_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ConfigError) as err:
        sweep(**kwargs)
    assert message in str(err.value)


def test_a_combination_the_config_cannot_build_is_refused_before_any_trial():
    # Each value alone fits the base (cnn); lenet with a stride does not: that failed trial by trial (three
    # failures in a row ended the sweep before the cnn points ran).
    with pytest.raises(ConfigError, match=r"\[sweep.params\] with model.name = 'lenet', model.stride = 1: model "
                                          r"'lenet' does not take option\(s\) stride"):
        sweep({"model.name": ["cnn", "lenet"], "model.stride": [1, 2]}, base={"model": {"name": "cnn"}})


def test_an_ema_objective_with_ema_swept_off_is_refused():
    base = {"ema": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"with ema.enabled = False: sweep.objective = 'ema_val_accuracy' needs "
                                          r"\[ema\] enabled = true, and this point switches it off"):
        sweep({"ema.enabled": [False, True]}, base=base, objective="ema_val_accuracy")
    sweep({"ema.decay": [0.9, 0.99]}, base=base, objective="ema_val_accuracy")  # on everywhere: fine


def test_defaults_and_derived_values():
    s = sweep()
    assert (s.sampler, s.trials, s.objective, s.direction, s.pruner, s.seed, s.workers, s.storage) == (
        "tpe", 20, "val_accuracy", "maximize", "none", 0, 1, None)
    assert sweep(objective="val_loss").direction == "minimize"
    assert sweep(objective="val_error", direction="minimize").direction == "minimize"  # said, and agreeing
    grid = sweep(sampler="grid", params={"optimizer.lr": [0.001, 0.01, 0.1], "train.batch_size": [64, 128]})
    assert grid.trials == 6  # the whole grid


def test_grid_points_are_the_exact_product_in_file_order():
    s = sweep(sampler="grid", params={"optimizer.lr": [0.001, 0.01], "model.channels": [[4, 8], [8, 16]],
                                      "optimizer.name": {"type": "categorical", "choices": ["sgd", "adam"]}})
    points = grid_points(s)
    assert len(points) == 8 and len({tuple(p.items()) for p in points}) == 8
    assert points[0] == {"optimizer.lr": 0.001, "model.channels": "[4, 8]", "optimizer.name": "sgd"}
    assert points[-1] == {"optimizer.lr": 0.01, "model.channels": "[8, 16]", "optimizer.name": "adam"}
    # A list value travels through Optuna as its JSON text and comes back as the config's tuple.
    cfg = apply_params(s, points[-1])
    assert (cfg.optimizer.lr, cfg.model.channels, cfg.optimizer.name) == (0.01, (8, 16), "adam")


def test_a_file_with_command_line_values(tmp_path):
    path = tmp_path / "my-search.toml"
    path.write_text('[train]\nepochs = 3\n\n[sweep]\ntrials = 5\n\n[sweep.params]\n"optimizer.lr" = [0.001, 0.01]\n')
    s = load_sweep(path)
    assert (s.study_name, s.trials, s.base.train.epochs, s.source) == ("my-search", 5, 3, path)
    s = load_sweep(path, trials=9, workers=2, storage="sqlite:///x.db", data_dir="/data", overrides=["train.epochs=1"])
    assert (s.trials, s.workers, s.storage, s.base.data.dir, s.base.train.epochs) == (9, 2, "sqlite:///x.db", "/data", 1)
    assert s.overrides == ("train.epochs=1",) and s.data_dir == "/data"
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_sweep(path, overrides=["train.epoch=1"])


def test_a_sweep_file_with_a_byte_order_mark_loads(tmp_path):
    # as a config file does (an editor on Windows may write one); tomllib refused it at line 1, column 1
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[sweep]\ntrials = 2\n[sweep.params]\n"optimizer.lr" = [0.001, 0.01]\n')
    assert load_sweep(path).trials == 2


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "plain.toml"
    path.write_text("[train]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"plain.toml has no \[sweep\] table"):
        load_sweep(path)
    path.write_text('[sweep]\nsampler = "grid"\n[sweep.params]\n"train.epochs" = {type = "int", low = 1, high = 3}\n')
    with pytest.raises(ConfigError, match=r"plain.toml: sweep.params.\"train.epochs\": the grid sampler needs a list"):
        load_sweep(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "missing.toml")


def test_train_refuses_a_sweep_file(tmp_path, capsys):
    from mnistlab.cli import main

    path = tmp_path / "s.toml"
    path.write_text('[train]\nepochs = 1\n[sweep]\n[sweep.params]\n"optimizer.lr" = [0.001, 0.01]\n')
    with pytest.raises(ConfigError, match=r"is a sweep file \(it has a \[sweep\] table\); run it with `mnistlab sweep"):
        load_config(path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "run it with `mnistlab sweep" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_best_params_give_the_same_config_as_overrides():
    s = sweep(params={"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2},
                      "train.batch_size": {"type": "int", "low": 32, "high": 256, "step": 32}})
    assert apply_params(s, {"optimizer.lr": 0.002, "train.batch_size": 96}) == apply_overrides(
        Config(), {"optimizer.lr": 0.002, "train.batch_size": 96})


def test_no_more_workers_than_cpu_cores(monkeypatch):
    # 100 workers on 2 cores ran this machine out of memory, each a training process
    import mnistlab.sweep.spec as spec_module

    monkeypatch.setattr(spec_module.machine, "usable_cores", lambda: 2)
    assert sweep(trials=9, workers=2).workers == 2
    with pytest.raises(ConfigError, match=r"sweep.workers = 3 but this machine has 2 CPU core\(s\); use at most 2"):
        sweep(trials=9, workers=3)


@pytest.mark.parametrize(
    "param, message",
    [
        ({"type": "int", "low": 64, "high": 300, "step": 64},
         'sweep.params."train.batch_size": step = 64 does not divide high - low = 300 - 64 = 236, so high = 300 '
         "would never be tried (the values stop at 256); set high = 256 or 320"),
        ({"type": "int", "low": 64, "high": 100, "step": 64}, "(the values stop at 64); set high = 128"),
        ({"type": "float", "low": 0.1, "high": 0.55, "step": 0.1},
         "step = 0.1 does not divide high - low = 0.55 - 0.1 = 0.45, so high = 0.55 would never be tried (the "
         "values stop at 0.5); set high = 0.5 or 0.6"),
    ],
    ids=["int", "int-step-past-high", "float"],
)
def test_a_step_that_does_not_divide_the_range_is_refused_with_a_high_that_fits(param, message):
    # Optuna quietly ended the range below high instead, and warned about it on every trial.
    key = "train.batch_size" if param["type"] == "int" else "optimizer.lr"
    with pytest.raises(ConfigError) as err:
        sweep({key: param})
    assert message in str(err.value)


def test_a_listed_value_with_a_range_is_checked_at_the_ranges_bounds():
    # Each value alone fits the base; a listed one with the range's low did not, and failed trial by trial.
    with pytest.raises(ConfigError, match=r"with model.name = 'lenet', model.stride = 1 \(its low\): model 'lenet' "
                                          r"does not take option\(s\) stride"):
        sweep({"model.name": ["cnn", "lenet"], "model.stride": {"type": "int", "low": 1, "high": 2}},
              base={"model": {"name": "cnn"}})
    sgd = {"optimizer": {"name": "sgd"}}
    with pytest.raises(ConfigError, match=r"with optimizer.nesterov = True, optimizer.momentum = 0.0 \(its low\): "
                                          r"optimizer.nesterov needs optimizer.momentum > 0"):
        sweep({"optimizer.nesterov": [False, True], "optimizer.momentum": {"type": "float", "low": 0.0, "high": 0.9}},
              base=sgd)
    sweep({"optimizer.nesterov": [False, True], "optimizer.momentum": {"type": "float", "low": 0.5, "high": 0.9}},
          base=sgd)  # momentum above 0 throughout: fine


def test_a_finite_space_runs_each_point_at_most_once_by_default():
    s = sweep({"optimizer.name": ["adam", "sgd"], "train.batch_size": {"type": "int", "low": 64, "high": 128,
                                                                       "step": 64}})
    assert s.trials == 4  # not 20: no trial repeats another's values
    # 0.5 - 0.1 is 0.4 to the file but 0.39999999999999997 in floats: the step fits, in decimals as Optuna checks it
    assert sweep({"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.1}}).trials == 5
    assert sweep({"optimizer.name": ["adam", "sgd"], "optimizer.lr": LR["optimizer.lr"]}).trials == 20  # endless
    assert sweep(trials=10, params={"optimizer.name": ["adam", "sgd"]}).trials == 10  # asked for: kept, and warned


def test_values_from_the_command_line_are_named_as_the_flags_given(tmp_path, monkeypatch):
    # `--workers 3` was reported as "sweep.workers = 3", a key the user never wrote.
    import mnistlab.sweep.spec as spec_module

    path = tmp_path / "s.toml"
    path.write_text('[sweep]\nsampler = "grid"\ntrials = 2\n[sweep.params]\n"optimizer.lr" = [0.001, 0.01]\n')
    with pytest.raises(ConfigError, match=r"s.toml: --workers 3 but the sweep has 2 trial\(s\); use at most 2$"):
        load_sweep(path, workers=3)
    with pytest.raises(ConfigError, match=r"--trials 5 but the grid has only 2 points; leave --trials out to run"):
        load_sweep(path, trials=5)
    with pytest.raises(ConfigError, match=r"--storage study.db is not a database URL"):
        load_sweep(path, storage="study.db")
    monkeypatch.setattr(spec_module.machine, "usable_cores", lambda: 1)
    with pytest.raises(ConfigError, match=r"--workers 2 but this machine has 1 CPU core\(s\)"):
        load_sweep(path, workers=2)
    path.write_text('[sweep]\nsampler = "grid"\nworkers = 2\n[sweep.params]\n"optimizer.lr" = [0.001, 0.01]\n')
    with pytest.raises(ConfigError, match=r"sweep.workers = 2 but this machine has 1 CPU core\(s\)"):  # the file's
        load_sweep(path)


def test_a_float_range_valid_only_at_its_bounds_is_refused():
    # mixup.alpha takes 0 (off) or 0.001 and up: a range from 0 drew values in between now and then, and each such
    # trial failed on its config.
    with pytest.raises(ConfigError, match=r'sweep.params."mixup.alpha": a draw next to 0 \(4.94066e-324\) is refused '
                                          r"\(mixup.alpha must be 0 \(off\) or at least 0.001"):
        sweep({"mixup.alpha": {"type": "float", "low": 0.0, "high": 0.4}})
    assert sweep({"mixup.alpha": {"type": "float", "low": 0.001, "high": 0.4}}).params[0].low == 0.001
    sweep({"mixup.alpha": [0.0, 0.2, 0.4]})  # listed: 0 (off) among them


def test_an_empty_or_folder_sweep_file_name_says_so(tmp_path):
    # "" was "cannot read sweep file .: [Errno 21] Is a directory: '.'"
    from mnistlab.sweep import load_sweep

    with pytest.raises(ConfigError, match="the sweep file's name is empty"):
        load_sweep("")
    with pytest.raises(ConfigError, match=f"sweep file {tmp_path} is a folder, not a TOML file"):
        load_sweep(tmp_path)
