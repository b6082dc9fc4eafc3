"""Bounds and checks of the config that hand-made mutants of config.py showed no test pinned down (audit 143):
for each, the value accepted at the bound, the one refused just past it, and the key the error names."""

import pytest

from mnistlab.config import (
    FLOAT32_TINY,
    Config,
    apply_overrides,
    check_checkpoint_filename,
    config_from_dict,
    load_config,
    stored_before_own_defaults,
)
from mnistlab.errors import ConfigError


@pytest.mark.parametrize("overrides, message", [
    (["model.kernel_size=0"], "model.kernel_size must be greater than zero, got 0"),
    (["model.stride=0"], "model.stride must be greater than zero, got 0"),
    (["model.width=0"], "model.width must be greater than zero, got 0"),
    (["model.padding=-1"], "model.padding must be zero or more, got -1"),
    (["model.dropout=-0.1"], "model.dropout must be in [0, 1), got -0.1"),
    (["model.channels=[8, 0]"], 'model.channels entries must be positive integers or "M", got 0'),
    (["model.hidden=[0]"], "model.hidden entries must be positive, got 0"),
    (["data.dir=' '"], "data.dir must be a folder, got an empty string"),
    (["data.val_size=-1"], "data.val_size must be zero or more, got -1"),
    (["data.train_limit=0"], "data.train_limit must be greater than zero, got 0"),
    (["data.dataset=emnist"], "data.dataset = 'emnist' is not valid; choose one of: mnist, fashion-mnist, kmnist"),
    (["optimizer.eps=1e-38"], "optimizer.eps must be at least 1.18e-38"),
    (["optimizer.rho=1.0"], "optimizer.rho must be in [0, 1), got 1.0"),
    (["optimizer.weight_decay=-0.01"], "optimizer.weight_decay must be zero or more, got -0.01"),
    (["schedule.warmup_epochs=1000001"], "schedule.warmup_epochs must be at most 1e+06"),
    (["schedule.div_factor=0.99"], "schedule.div_factor must be at least 1"),
    (["schedule.milestones=[0, 5]"], "schedule.milestones must be epochs of 1 or more in increasing order, got [0, 5]"),
    (["schedule.milestones=[5, 5]"], "schedule.milestones must be epochs of 1 or more in increasing order, got [5, 5]"),
    (["schedule.name=multistep"], "schedule.name = multistep needs schedule.milestones"),
    (["schedule.step_epochs=0"], "schedule.step_epochs must be greater than zero, got 0"),
    (["schedule.min_lr=-0.001"], "schedule.min_lr must be zero or more, got -0.001"),
    (["train.threads=1025"], "train.threads must be at most 1024, got 1025"),
    (["train.max_steps=0"], "train.max_steps must be greater than zero, got 0"),
    (["train.micro_batch_size=0"], "train.micro_batch_size must be greater than zero, got 0"),
    (["train.eval_batch_size=0"], "train.eval_batch_size must be greater than zero, got 0"),
    (["train.grad_clip=0"], "train.grad_clip must be greater than zero, got 0"),
    (["train.max_minutes=0"], "train.max_minutes must be greater than zero, got 0"),
    (["train.precision=fp8"], "train.precision = 'fp8' is not valid; choose one of: auto, fp32, bf16, fp16"),
    (['train.class_weights="balance"'], 'train.class_weights must be a list of weights, one per class, or "balanced"'),
    (["train.class_weights=[1, -0.5]"], "train.class_weights must be finite numbers of 0 or more, not all 0"),
    (["train.class_weights=[0, 0]"],
     "train.class_weights must be finite numbers of 0 or more, not all 0, got [0.0, 0.0]"),
    (["train.class_weights=[1, 1e39]"], "train.class_weights must be finite numbers of 0 or more"),
    (["finetune.init_from=' '"], "finetune.init_from must be a checkpoint file or run folder, got an empty string"),
    (['finetune.freeze=["features", " "]'], "finetune.freeze entries must be non-empty patterns"),
    (['finetune.freeze=["features"]', "finetune.unfreeze_at=1"], "finetune.unfreeze_at must be 2 or more"),
    (["early_stopping.error=accuracy"], "early_stopping.error = 'accuracy' is not valid; choose one of: loss, error"),
    (["early_stopping.mode=minimize"], "early_stopping.mode = 'minimize' is not valid; choose one of: auto, min, max"),
    (["early_stopping.patience=-1"], "early_stopping.patience must be zero or more, got -1"),
    (["early_stopping.start_epoch=0"], "early_stopping.start_epoch must be greater than zero, got 0"),
    (["early_stopping.alpha=-1"], "early_stopping.alpha must be zero or more, got -1"),
    (["reduce_lr.factor=0"], "reduce_lr.factor must be in (0, 1), got 0"),
    (["reduce_lr.factor=1"], "reduce_lr.factor must be in (0, 1), got 1"),
    (["reduce_lr.cooldown=-1"], "reduce_lr.cooldown must be zero or more, got -1"),
    (["reduce_lr.threshold_mode=relative"],
     "reduce_lr.threshold_mode = 'relative' is not valid; choose one of: rel, abs"),
])
def test_a_value_just_past_a_bound_is_refused_naming_its_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), overrides)
    assert message in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["model.kernel_size=1", "model.stride=1", "model.width=0.01", "model.padding=0", "model.dropout=0.0",
     "model.channels=[1, \"M\"]", "model.hidden=[1]"],
    ["data.val_size=0", "data.train_limit=1", "data.dataset=kmnist"],
    [f"optimizer.eps={FLOAT32_TINY!r}", "optimizer.rho=0.0", "optimizer.weight_decay=0"],
    # nesterov is SGD's alone: with RMSprop (momentum unset: 0) it is a warning, not an error
    ["optimizer.name=rmsprop", "optimizer.nesterov=true"],
    ["schedule.warmup_epochs=1000000", "schedule.div_factor=1.0", "schedule.final_div_factor=1.0"],
    ["schedule.name=multistep", "schedule.milestones=[1, 2]"],
    ["train.threads=1024", "train.precision=fp16", "train.max_steps=1", "train.micro_batch_size=1"],
    ["train.class_weights=[0, 3.4028234663852886e38]"],
    ['finetune.freeze=["features"]', "finetune.unfreeze_at=2"],
    ["early_stopping.patience=0", "early_stopping.start_epoch=1", "early_stopping.alpha=0",
     "early_stopping.error=error", "early_stopping.mode=max"],
    ["reduce_lr.factor=0.999", "reduce_lr.cooldown=0", "reduce_lr.threshold_mode=abs"],
])
def test_the_value_at_a_bound_is_accepted(overrides):
    apply_overrides(Config(), overrides)


def test_rmsprop_with_nesterov_keeps_both_settings():
    cfg = apply_overrides(Config(), ["optimizer.name=rmsprop", "optimizer.nesterov=true"])
    assert (cfg.optimizer.name, cfg.optimizer.nesterov, cfg.optimizer.setting("momentum")) == ("rmsprop", True, 0.0)


def test_an_old_run_config_keeps_the_momentum_it_trained_with(tmp_path):
    # a config.toml an older mnistlab wrote (every [optimizer] key): only the stored defaults are dropped
    path = tmp_path / "config.toml"
    path.write_text('[optimizer]\nname = "sgd"\nlr = 0.1\nmomentum = 0.5\nnesterov = false\nbetas = [0.9, 0.999]\n'
                    "eps = 1e-8\n", encoding="utf-8")
    cfg = load_config(path)
    assert (cfg.optimizer.momentum, cfg.optimizer.eps) == (0.5, None)


def test_a_config_dict_of_now_is_not_rewritten_as_an_old_one():
    data = {"optimizer": {"name": "adam", "momentum": 0.9, "eps": 1e-8, "rho": 0.9}}
    assert stored_before_own_defaults(data) == data


@pytest.mark.parametrize("filename", [" ", ".hidden.ckpt", "{epoch:/>4}.ckpt", "{epoch:.>4}.ckpt", "a" * 201])
def test_a_checkpoint_name_that_is_no_plain_file_name_is_refused(filename):
    with pytest.raises(ConfigError, match=r"^checkpoint\.filename = "):
        apply_overrides(Config(), {"checkpoint.filename": filename})


def test_a_checkpoint_name_of_the_longest_length_is_accepted():
    assert apply_overrides(Config(), {"checkpoint.filename": "a" * 200}).checkpoint.filename == "a" * 200
    check_checkpoint_filename("a" * 200)


@pytest.mark.parametrize("overrides, message", [
    (["checkpoint.save_top_k=-1"], "checkpoint.save_top_k must be zero or more, got -1"),
    (["tensorboard.histogram_every_n_epochs=-1"], "tensorboard.histogram_every_n_epochs must be zero or more, got -1"),
    (["augment.scale=1.0"], "augment.scale must be in [0, 1), got 1.0"),
    (["augment.rotation=180.5"], "augment.rotation must be at most 180 (degrees), got 180.5"),
    (["augment.shear=90"], "augment.shear must be below 90 (degrees), got 90"),
    (["augment.shift=1.01"], "augment.shift must be at most 1 (the whole side), got 1.01"),
    (["augment.elastic_sigma=0.0099"], "augment.elastic_sigma must be at least 0.01 pixels"),
    (["augment.elastic_alpha=1000.5"], "augment.elastic_alpha must be at most 1000 pixels, got 1000.5"),
    (["mixup.cutmix_alpha=0.0009"], "mixup.cutmix_alpha must be 0 (off) or at least 0.001, got 0.0009"),
    (["mixup.alpha=1000001"], "mixup.alpha must be at most 1e+06"),
    (["tta.shift=28"], "tta.shift must be below 28 pixels"),
    (["ema.decay=0"], "ema.decay must be in (0, 1), got 0.0"),
    (["ema.decay=1"], "ema.decay must be in (0, 1), got 1.0"),
    (["reduce_lr.enabled=true", 'reduce_lr.monitor="ema_val_accuracy"'], "reduce_lr.monitor = 'ema_val_accuracy' needs [ema] enabled = true"),
    (["schedule.name=cosine", "optimizer.lr=0.01", "schedule.min_lr=0.02"], "schedule.min_lr = 0.02 is above"),
    (["train.epochs=true"], "train.epochs = True has the wrong type; expected int"),
    (["optimizer.lr=true"], "optimizer.lr = True has the wrong type; expected float"),
    (["train.max_steps=100000000000000000000000000000"],
     "train.max_steps = 100000000000... (30 digits) is too large (at most 2**64)"),
    (["train=3"], "override 'train' must look like section.key=value"),
    ([" =3"], "override ' =3' must look like section.key=value"),
])
def test_more_values_past_a_bound_are_refused_naming_their_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), overrides)
    assert message in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["augment.scale=0.99", "augment.rotation=180", "augment.shear=89.9", "augment.shift=1",
     "augment.elastic_sigma=0.01", "augment.elastic_alpha=1000"],
    ["mixup.alpha=0.001", "mixup.cutmix_alpha=1000000"],
    ["tta.shift=27"],
    ["ema.enabled=true", 'reduce_lr.monitor="ema_val_loss"', 'checkpoint.monitor="ema_val_accuracy"'],
    ["schedule.name=cosine", "optimizer.lr=0.01", "schedule.min_lr=0.01"],
    ["schedule.name=onecycle", "optimizer.lr=0.01", "schedule.min_lr=0.02"],  # min_lr is cosine's alone
    ["train.max_steps=18446744073709551616"],  # 2**64: the most an integer key takes
])
def test_more_values_at_a_bound_are_accepted(overrides):
    apply_overrides(Config(), overrides)


def test_mixup_is_on_with_either_alpha():
    assert apply_overrides(Config(), ["mixup.cutmix_alpha=1.0"]).mixup.enabled
    assert apply_overrides(Config(), ["mixup.alpha=0.2"]).mixup.enabled
    assert not Config().mixup.enabled


def test_an_old_rmsprop_config_keeps_its_stored_momentum(tmp_path):
    # only sgd, adam and adamw existed when every key was stored: RMSprop's unset momentum is 0, not the 0.9 stored
    path = tmp_path / "config.toml"
    path.write_text('[optimizer]\nname = "rmsprop"\nlr = 0.01\nmomentum = 0.9\nnesterov = false\n'
                    "betas = [0.9, 0.999]\neps = 1e-8\n", encoding="utf-8")
    assert load_config(path).optimizer.setting("momentum") == 0.9


def test_set_values_are_read_in_any_case_and_with_spaces_around_the_key():
    cfg = apply_overrides(Config(), ["train.threads=None", "optimizer.nesterov=TRUE", "optimizer.name=sgd",
                                     "train.epochs =3", "early_stopping.criterion=none"])
    assert (cfg.train.threads, cfg.optimizer.nesterov, cfg.train.epochs) == (None, True, 3)
    assert cfg.early_stopping.criterion == "none"
    assert apply_overrides(Config(), ["data.dir=2024"]).data.dir == "2024"  # a text key takes the text as typed
    assert apply_overrides(Config(), ["data.dir= some/where "]).data.dir == "some/where"


def test_a_python_value_gets_no_second_reading_and_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="optimizer.lr = '.5' has the wrong type"):
        apply_overrides(Config(), {"optimizer.lr": ".5"})
    with pytest.raises(ConfigError, match="put it in a list"):
        apply_overrides(Config(), "train.epochs=3")
    with pytest.raises(ConfigError, match="got None"):
        apply_overrides(Config(), None)


def test_a_bad_value_in_a_file_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text("[train]\nepochs = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"my\.toml: train\.epochs must be greater than zero, got 0$"):
        load_config(path)


def test_a_section_that_is_not_a_table_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^\[train\] must be a table of keys, got 3$"):
        config_from_dict({"train": 3})


def test_none_from_python_for_a_text_key_is_the_word_none():
    assert apply_overrides(Config(), {"early_stopping.criterion": None}).early_stopping.criterion == "none"
    with pytest.raises(ConfigError, match="data.dataset = 'none' is not valid"):
        apply_overrides(Config(), {"data.dataset": None})
