import math

import pytest
import torch

from mnistlab.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    load_config,
)
from mnistlab.errors import ConfigError


def test_defaults_round_trip_through_toml(tmp_path):
    cfg = apply_overrides(Config(), ["model.channels=[8, \"M\", 16]", "train.grad_clip=1.5", "optimizer.betas=[0.9, 0.99]"])
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_strings_with_control_characters_round_trip(tmp_path):
    # a folder name may hold a newline, a CR or an escape character: config.toml must stay valid TOML
    cfg = apply_overrides(Config(), {"data.dir": "a\nb\r\x1b\x7f\x00\t\"\\ü", "finetune.freeze": ["x\ny"]})
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path) == cfg


def test_a_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[train]\nepochs = 3\n")
    assert load_config(path).train.epochs == 3


def test_override_parses_toml_values_and_none():
    cfg = apply_overrides(Config(), ["train.epochs=3", "optimizer.nesterov=true", "optimizer.lr=0.5", "data.dir=some/where"])
    assert (cfg.train.epochs, cfg.optimizer.nesterov, cfg.optimizer.lr, cfg.data.dir) == (3, True, 0.5, "some/where")
    cfg = apply_overrides(cfg, ["data.dir=none"])
    assert cfg.data.dir is None
    # ints are accepted where floats are expected, and become floats
    assert apply_overrides(Config(), ["optimizer.lr=1"]).optimizer.lr == 1.0


def test_overrides_apply_together_in_any_order_and_a_later_key_wins():
    # finetune.unfreeze_at is only valid once finetune.freeze is set: the section is checked with both.
    for order in (['finetune.unfreeze_at=3', 'finetune.freeze=["features"]'],
                  ['finetune.freeze=["features"]', 'finetune.unfreeze_at=3']):
        cfg = apply_overrides(Config(), order)
        assert (cfg.finetune.freeze, cfg.finetune.unfreeze_at) == (("features",), 3)
    assert apply_overrides(Config(), ["train.epochs=3", "train.epochs=5"]).train.epochs == 5
    with pytest.raises(ConfigError, match="unfreeze_at needs finetune.freeze"):  # still checked when alone
        apply_overrides(Config(), ["finetune.unfreeze_at=3", "train.epochs=4"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "valid keys in [train]: epochs, batch_size"),
        ("trian.epochs=3", "unknown section 'trian' in override 'trian.epochs'; valid sections: model, data"),
        ("train.epochs=\"three\"", "train.epochs = 'three' has the wrong type; expected int"),
        ("train.epochs=2.5", "expected int"),
        ("train.epochs=0", "train.epochs must be greater than zero, got 0"),
        ("train.batch_size=-8", "train.batch_size must be greater than zero, got -8"),
        ("optimizer.lr=nan", "optimizer.lr must be a finite number, got nan"),
        ("optimizer.lr=inf", "optimizer.lr must be a finite number"),
        ("optimizer.name=lbfgs", "choose one of: sgd, adam, adamw, nadam, adamax, rmsprop, adadelta, adagrad"),
        ("model.channels=[8, \"X\"]", "model.channels entries must be positive integers or \"M\""),
        ("model.dropout=1.0", "model.dropout must be in [0, 1)"),
        ("model.crop=-1", "model.crop must be zero or more, got -1"),
        ("model.crop=14", "model.crop must be below 14 pixels (half the images' side), got 14"),
        ("optimizer.betas=[0.9]", "optimizer.betas needs 2 values"),
        ("train.device=tpu", "choose one of: auto, cpu, cuda, mps"),
        ("epochs", "must look like section.key=value"),
        ("checkpoint.monitor=\"val_acc\"", "checkpoint.monitor = 'val_acc' is not valid; choose one of: val_loss"),
        ("reduce_lr.monitor=\"foo\"", "reduce_lr.monitor = 'foo' is not valid"),
        ("checkpoint.monitor=\"ema_val_loss\"", "checkpoint.monitor = 'ema_val_loss' needs [ema] enabled"),
        ("checkpoint.filename=\"sub/e{epoch}.ckpt\"", "must be a plain file name"),
        ("checkpoint.filename=\"../e{epoch}.ckpt\"", "must be a plain file name"),
        ("checkpoint.filename=\"{val_accuracy:d}.ckpt\"", "cannot be filled with an epoch's metrics (Unknown format"),
        ("checkpoint.filename=\"{val_acc}.ckpt\"", "uses the unknown field 'val_acc'; the fields are an epoch's"),
        ("checkpoint.filename=\"e{epoch.real.x}.ckpt\"", "cannot be filled with an epoch's metrics"),
        ("checkpoint.filename=\"e{epoch:/>5}.ckpt\"", "must be a plain file name"),
        ("checkpoint.filename=\"e{epoch.ckpt\"", "cannot be filled with an epoch's metrics"),
        ("train.threads=100000", "train.threads must be at most 1024"),
        ("tta.shift=28", "tta.shift must be below 28 pixels"),
        ("train.seed=18446744073709551616", "train.seed must be below 2**32 = 4294967296, got 18446744073709551616"),
        # torch's CPU generator keeps 32 bits: 2**32 drew what 0 draws (the same split, the same initial weights)
        ("data.split_seed=4294967296", "data.split_seed must be below 2**32 = 4294967296, got 4294967296: torch's "
                                       "CPU generator keeps only a seed's low 32 bits, so it would draw what 0 draws"),
        ("train.seed=4294967303", "so it would draw what 7 draws"),
        ("early_stopping.baseline=nan", "early_stopping.baseline must be a finite number"),
        ("early_stopping.divergence_threshold=inf", "early_stopping.divergence_threshold must be a finite number"),
        ("augment.elastic_alpha=1e300", "augment.elastic_alpha must be at most 1000 pixels"),
        # finite but past any sense: each overflowed later, into a traceback after the run folder was made
        ("schedule.warmup_epochs=1e308", "schedule.warmup_epochs must be at most 1e+06"),
        ("schedule.div_factor=1e-320", "schedule.div_factor must be at least 1"),
        ("schedule.final_div_factor=0.5", "schedule.final_div_factor must be at least 1"),
        ("optimizer.momentum=1.5", "optimizer.momentum must be in [0, 1), got 1.5"),
        # the open ends of the ranges, exactly: each value on the boundary is refused
        ("optimizer.momentum=1.0", "optimizer.momentum must be in [0, 1), got 1.0"),
        ("optimizer.betas=[0.9, 1.0]", "optimizer.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
        ("optimizer.betas=[-0.1, 0.99]", "optimizer.betas must be two numbers in [0, 1), got [-0.1, 0.99]"),
        ("train.label_smoothing=1.0", "train.label_smoothing must be in [0, 1), got 1.0"),
        ("schedule.pct_start=0", "schedule.pct_start must be in (0, 1), got 0.0"),
        ("schedule.pct_start=1.0", "schedule.pct_start must be in (0, 1), got 1.0"),
        # below float32's smallest normal number the fused step rounds eps to 0: NaN after the first step
        ("optimizer.eps=1e-46", "optimizer.eps must be at least 1.18e-38 (float32's smallest normal number"),
        ("checkpoint.filename=\"{epoch:0>300}.ckpt\"", "makes names of up to 305 bytes; at most 200"),
        ("checkpoint.filename=\"{epoch:0>99999999999}.ckpt\"", "makes names far too long"),
        # a metric's own repr is up to 24 characters: {val_loss} x 15 passed the check with 0.5, and a run wrote
        # 2.0772511230468750 fifteen times after epoch 1 ("File name too long", and a half-made run folder)
        ("checkpoint.filename=\"" + "{val_loss}" * 15 + ".ckpt\"", "makes names of up to 365 bytes; at most 200"),
        # NUL passed, then open() raised ValueError after epoch 1 (a traceback); {epoch:c} gave "/" at epoch 47
        ('checkpoint.filename="a\\u0000{epoch}.ckpt"', "must be a plain file name"),
        ('checkpoint.filename="a\\t{epoch}.ckpt"', "must be a plain file name"),
        ('checkpoint.filename="e{epoch:c}.ckpt"', "the c conversion makes a character of the number"),
        # the folders the run makes: "plots" stopped the report, "tensorboard" the run after epoch 1
        ('checkpoint.filename="plots"', "is the name of a file or folder the run itself writes"),
        ('checkpoint.filename="tensorboard"', "is the name of a file or folder the run itself writes"),
        # the cache folder, and a download there, for a shell variable that was not set
        ("data.dir=", "data.dir must be a folder, got an empty string"),
        ("data.dir=\"\"", "data.dir must be a folder, got an empty string"),
        # 1e-50 is 0 in float32: every augmented image was NaN, and the run "diverged"
        ("augment.elastic_sigma=1e-50", "augment.elastic_sigma must be at least 0.01 pixels"),
        ("early_stopping.criterion=\"nope\"", "early_stopping.criterion = 'nope' is not valid"),
        # what the shell makes of model.channels=[8,"M"] without single quotes around it
        ("model.channels=[8,M]", "words in a list need double quotes, which the shell removes unless the argument "
                                 "is in single quotes: --set 'model.channels=[8,\"M\"]'"),
        # the type in words: it was Python's "tuple[Union[int, str], ...] | None"
        ("model.channels=[8,M,@]", "has the wrong type; expected a list of int or str, or none; it was read "
                                   "as text, not a list"),
        # a list without its brackets (Hydra's and many tools' way): said how to write it
        ("model.channels=16,32", "a list is written in brackets: --set 'model.channels=[16, 32]'"),
        ("model.channels=32,M,64", "a list is written in brackets: --set 'model.channels=[32, \"M\", 64]'"),
        ("optimizer.betas=0.9,0.99", "a list is written in brackets: --set 'optimizer.betas=[0.9, 0.99]'"),
    ],
)
def test_bad_overrides_are_clear(override, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), [override])
    assert message in str(err.value)


def test_text_that_is_not_utf8_is_refused_before_config_toml_is_written():
    # A data folder (or init_from, or checkpoint.filename) whose name is not UTF-8 reaches Python as surrogates;
    # the run wrote config.toml with them and died with a UnicodeEncodeError traceback.
    for key in ("data.dir", "finetune.init_from", "checkpoint.filename"):
        with pytest.raises(ConfigError, match=rf"{key} = '/?d\\xff.*' is not UTF-8 text, which config.toml"):
            apply_overrides(Config(), {key: "/d\udcff" if key != "checkpoint.filename" else "d\udcff{epoch}.ckpt"})


def test_sections_built_in_python_get_the_config_files_type_checks():
    # The Python API builds sections directly: epochs=True trained, wrote "epochs = true" into config.toml and
    # failed at the final test; lr="0.1" was a bare TypeError.
    from dataclasses import replace

    cfg = Config()
    for section, key, value, message in (
        ("train", "epochs", True, "train.epochs = True has the wrong type; expected int"),
        ("train", "epochs", 2.0, "train.epochs = 2.0 has the wrong type; expected int"),
        ("data", "train_limit", 1000.5, "data.train_limit = 1000.5 has the wrong type"),
        ("optimizer", "lr", "0.1", "optimizer.lr = '0.1' has the wrong type; expected float"),
        ("finetune", "freeze", "features", "finetune.freeze = 'features' has the wrong type"),
    ):
        with pytest.raises(ConfigError, match=message):
            replace(getattr(cfg, section), **{key: value})
    # what a config file would make of them: lists are tuples, whole numbers of float keys floats
    optimizer = replace(cfg.optimizer, lr=1, betas=[0.5, 0.5])
    assert (optimizer.lr, type(optimizer.lr), optimizer.betas) == (1.0, float, (0.5, 0.5))
    assert replace(cfg.finetune, freeze=["features"]).freeze == ("features",)


def test_the_closed_ends_of_the_ranges_are_accepted():
    # The other side of the boundaries refused above: 0 is a valid momentum, beta and label smoothing.
    cfg = apply_overrides(Config(), ["optimizer.momentum=0.0", "optimizer.betas=[0.0, 0.0]",
                                     "train.label_smoothing=0.0"])
    assert (cfg.optimizer.momentum, cfg.optimizer.betas, cfg.train.label_smoothing) == (0.0, (0.0, 0.0), 0.0)


def test_python_overrides_take_paths_and_refuse_keys_that_are_not_text(tmp_path):
    cfg = apply_overrides(Config(), {"data.dir": tmp_path, "finetune.init_from": tmp_path / "run"})
    assert (cfg.data.dir, cfg.finetune.init_from) == (str(tmp_path), str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="override key 1 must be a string like 'section.key'"):
        apply_overrides(Config(), {1: 2})  # an AttributeError before


def test_a_text_key_takes_a_set_value_as_typed_where_toml_would_read_a_number_or_a_date():
    # --set data.dir=2024 was refused: "data.dir = 2024 has the wrong type; expected str | None".
    for text in ("2024", "1e5", "1_000", "2024-01-01", "true"):
        assert apply_overrides(Config(), [f"data.dir={text}"]).data.dir == text
    from mnistlab.cli import _parser, _train_config

    cfg = _train_config(_parser().parse_args(["train", "--data-dir", "x", "--set", "data.dir=1e5", "--model", "cnn"]))
    assert (cfg.data.dir, cfg.model.name) == ("1e5", "cnn")
    # Only text keys, and only the command line's text: a number for a number key, or from Python, stays checked.
    with pytest.raises(ConfigError, match="train.epochs = 'abc' has the wrong type"):
        apply_overrides(Config(), ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="data.dir = 2024 has the wrong type"):
        apply_overrides(Config(), {"data.dir": 2024})


def test_a_cosine_schedule_may_not_end_above_its_peak():
    with pytest.raises(ConfigError, match="schedule.min_lr = 1 is above optimizer.lr = 0.01: the cosine schedule"):
        apply_overrides(Config(), ['schedule.name="cosine"', "schedule.min_lr=1.0"])
    # the other schedules do not read min_lr
    assert apply_overrides(Config(), ["schedule.min_lr=1.0"]).schedule.min_lr == 1.0


def test_the_bare_word_none_is_the_criterion_none():
    # --set early_stopping.criterion=none read `none` as "reset to None", which a string key refused
    cfg = apply_overrides(Config(), ['early_stopping.criterion="patience"'])
    assert apply_overrides(cfg, ["early_stopping.criterion=none"]).early_stopping.criterion == "none"


def test_every_metric_of_an_epoch_can_be_monitored():
    from mnistlab.callbacks import EPOCH_METRICS
    from mnistlab.config import MONITORS

    assert set(MONITORS) == set(EPOCH_METRICS) | {"ema_val_loss", "ema_val_accuracy"}
    cfg = apply_overrides(Config(), ["ema.enabled=true", "checkpoint.monitor=\"ema_val_accuracy\""])
    assert cfg.checkpoint.monitor == "ema_val_accuracy"


def test_unknown_keys_in_a_file_list_the_valid_ones(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 2\nbatchsize = 64\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train.batchsize; valid keys in \[train\]: epochs, batch_size"):
        load_config(path)
    path.write_text("[training]\nepochs = 2\n")
    with pytest.raises(ConfigError, match=r"unknown config section\(s\) training"):
        load_config(path)
    path.write_text("[train\nepochs = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_a_config_dict_with_non_string_keys_is_a_config_error():
    # TOML keys are strings; a dict stored in a crafted checkpoint need not be.
    with pytest.raises(ConfigError, match=r"unknown config section\(s\) 1; valid sections: model"):
        config_from_dict({1: {}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train.1, train.a; valid keys in \[train\]"):
        config_from_dict({"train": {1: 2, "a": 3}})


def test_every_preset_loads():
    from pathlib import Path

    presets = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
    assert presets, "configs/ has no presets"
    for path in presets:
        if "[sweep]" in path.read_text():  # a sweep file: its base is checked by the sweep loader, and train refuses it
            from mnistlab.sweep import load_sweep

            assert math.isfinite(load_sweep(path).base.optimizer.lr)
            with pytest.raises(ConfigError, match=r"is a sweep file .* run it with `mnistlab sweep"):
                load_config(path)
            continue
        cfg = load_config(path)
        assert math.isfinite(cfg.optimizer.lr)


def test_a_run_stores_its_data_folder_as_an_absolute_path(mnist_root, tmp_path, monkeypatch, no_report):
    import os

    from mnistlab.training.run import train

    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(mnist_root, tmp_path)
    cfg = apply_overrides(Config(), {
        "data.dir": relative, "data.download": False, "data.train_limit": 500, "data.val_size": 100,
        "model.name": "cnn", "model.channels": [4, 8], "train.epochs": 1, "train.progress": False,
        "tensorboard.enabled": False,
    })
    train(cfg, out="run", quiet=True)
    # evaluate or --resume from another folder reads the data from where the run did
    assert load_config(tmp_path / "run" / "config.toml").data.dir == os.path.abspath(mnist_root)
    # ... and so from a shell without $MNISTLAB_DATA, which the run found its data by (that looked in the cache)
    monkeypatch.setenv("MNISTLAB_DATA", relative)
    train(apply_overrides(cfg, ["data.dir=none"]), out="env", quiet=True)
    assert load_config(tmp_path / "env" / "config.toml").data.dir == os.path.abspath(mnist_root)


@pytest.mark.parametrize("key", ["augment.rotation", "optimizer.lr", "train.epochs", "data.train_limit"])
def test_numbers_too_large_for_their_field_are_config_errors(key):
    huge = 10**400  # TOML and --set both give Python ints of any size
    with pytest.raises(ConfigError, match=rf"{key} = 100000000000\.\.\. \(401 digits\) is too large"):
        apply_overrides(Config(), {key: huge})
    with pytest.raises(ConfigError, match="is too large"):
        apply_overrides(Config(), [f"{key}={huge}"])


def test_adamw_decays_by_pytorchs_default_unless_told_otherwise():
    # weight_decay defaulted to 0 for every optimizer, and AdamW without decay is Adam: --optimizer adamw trained
    # bit for bit as adam.

    from mnistlab.training.optim import build_optimizer

    def decay(*overrides):
        cfg = apply_overrides(Config(), list(overrides)).optimizer
        return build_optimizer(torch.nn.Linear(2, 2).parameters(), cfg, torch.device("cpu")).defaults["weight_decay"]

    assert decay("optimizer.name=adamw") == torch.optim.AdamW([torch.zeros(1)]).defaults["weight_decay"] == 0.01
    assert decay("optimizer.name=adam") == decay("optimizer.name=sgd") == 0.0
    assert decay("optimizer.name=adamw", "optimizer.weight_decay=0") == 0.0
    assert decay("optimizer.name=sgd", "optimizer.weight_decay=5e-4") == 5e-4


def test_more_threads_than_cores_are_warned_about(monkeypatch):
    # --threads 64 on a 2-core machine was taken without a word.
    from mnistlab import machine
    from mnistlab.training import distributed
    from mnistlab.training.run import thread_warning

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(machine, "usable_cores", lambda: 4)
    assert thread_warning(None, cpu) is None and thread_warning(4, cpu) is None and thread_warning(8, cuda) is None
    assert thread_warning(5, cpu) == ("train.threads = 5 is more than the 4 CPU core(s) this process may run on: "
                                      "the threads cannot all run at once and take turns on the cores; at most 4 "
                                      "keeps one on each")
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # --nproc 2: each process's threads count
    assert thread_warning(2, cpu) is None
    assert thread_warning(3, cpu).startswith("train.threads = 3 in each of 2 processes is more than the 4 CPU core(s) ")
    assert thread_warning(3, cpu).endswith("at most 2 keeps one on each")


def test_optimizer_settings_the_optimizer_does_not_read_are_warned_about_in_a_run(monkeypatch):
    # --optimizer adam with --set optimizer.nesterov=true (or momentum) was taken and silently ignored.
    from mnistlab.training.run import settings_warnings

    cfg = apply_overrides(Config(), ["optimizer.nesterov=true", "optimizer.momentum=0.5"])
    assert settings_warnings(cfg) == [
        "optimizer.momentum = 0.5 is not used by the adam optimizer (it is read by sgd and rmsprop only)",
        "optimizer.nesterov = True is not used by the adam optimizer (it is read by sgd only)",
    ]
    assert settings_warnings(apply_overrides(cfg, ["optimizer.name=sgd"])) == []
    assert settings_warnings(apply_overrides(Config(), ["optimizer.name=sgd", "optimizer.betas=[0.9, 0.99]"])) == [
        "optimizer.betas = (0.9, 0.99) is not used by the sgd optimizer (it is read by adam, adamw, nadam and "
        "adamax only)"]
    # with the schedule's and early stopping's, in that order
    assert settings_warnings(apply_overrides(cfg, ["schedule.gamma=0.5", "early_stopping.criterion=gl",
                                                   "early_stopping.patience=3"]))[0].startswith(
        "early_stopping.patience = 3 is not used by criterion 'gl'")


def test_the_cores_counted_are_those_the_process_may_run_on(monkeypatch):
    # os.cpu_count() is the host's: under taskset or a container's cpuset of 2 of 64 cores, --nproc, the sweep's
    # workers and the threads were planned for 64.
    import os

    from mnistlab import machine

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert machine.usable_cores() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows
    assert machine.usable_cores() == 64
