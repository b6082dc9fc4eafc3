"""Audit 165: how ``--set`` overrides are split and read, what a TOML config file and config.toml keep, and the
words of the errors, where hand-made mutants of config.py showed no test pinned them down (the bounds are
audit 143's, tests/config/test_config_mutation_audit143.py)."""

from __future__ import annotations

import pytest

from mnistlab.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    diff_from_default,
    load_config,
)
from mnistlab.errors import ConfigError


def _error(overrides) -> str:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), overrides)
    return str(info.value)


def test_null_resets_an_optional_key_as_none_does():
    # mutant: only "none" read as unset (JSON's and YAML's null became the text "null", refused by int keys)
    cfg = apply_overrides(Config(), ["data.train_limit=1000", "train.threads=2"])
    cfg = apply_overrides(cfg, ["data.train_limit=null", "train.threads=NULL"])
    assert (cfg.data.train_limit, cfg.train.threads) == (None, None)


def test_a_value_may_hold_an_equals_sign():
    # mutant: split at the last "=" (the key became "data.dir=runs/lr", an unknown key)
    cfg = apply_overrides(Config(), ["data.dir=runs/lr=0.1", 'checkpoint.filename="e={epoch}.ckpt"'])
    assert (cfg.data.dir, cfg.checkpoint.filename) == ("runs/lr=0.1", "e={epoch}.ckpt")


def test_a_whole_key_without_a_value_says_how_an_override_is_written():
    # mutant: no "=" taken as an empty value ("train.epochs = '' has the wrong type")
    assert _error(["train.epochs"]).startswith("override 'train.epochs' must look like section.key=value")


def test_spaces_around_the_equals_sign_keep_the_second_reading():
    # `--set "optimizer.lr = .5"`: the text kept for the second reading (a float as the flags read it, a text key's
    # value as typed) is the one read, without its spaces, and under the key without them
    cfg = apply_overrides(Config(), ["optimizer.lr = .5", "data.dir = 2024", "model.batch_norm= True"])
    assert (cfg.optimizer.lr, cfg.data.dir, cfg.model.batch_norm) == (0.5, "2024", True)


@pytest.mark.parametrize("override, shown", [
    # a word with a dot (a parameter name, as freeze takes them) is quoted whole: mutant quoted nothing, and the
    # error said only "it was read as text, not a list"
    ("finetune.freeze=[features.0,classifier]", "--set 'finetune.freeze=[\"features.0\",\"classifier\"]'"),
    ("model.channels=[8, M, 16]", "--set 'model.channels=[8, \"M\", 16]'"),
])
def test_words_of_a_list_are_shown_quoted(override, shown):
    message = _error([override])
    assert message.endswith(f"words in a list need double quotes, which the shell removes unless the argument is "
                            f"in single quotes: {shown}")
    apply_overrides(Config(), [shown.split("'")[1]])  # and what it shows works


@pytest.mark.parametrize("override, shown", [
    # `--set 'model.channels=32,"M",64'`: the quoted word was shown as "\"M\"", the letter M in quotes, which the
    # config then refused (and for finetune.freeze, a pattern with quotes in it, which matches no parameter)
    ('model.channels=32,"M",64', 'model.channels=[32, "M", 64]'),
    ('finetune.freeze="features","classifier.1"', 'finetune.freeze=["features", "classifier.1"]'),
    ("finetune.freeze='features',x", 'finetune.freeze=["features", "x"]'),  # TOML's literal string
    ("finetune.freeze=2024-01-01,x", 'finetune.freeze=["2024-01-01", "x"]'),  # TOML reads a date: text here
])
def test_quoted_words_of_a_list_without_brackets_are_shown_once_quoted(override, shown):
    assert _error([override]).endswith(f"a list is written in brackets: --set '{shown}'")
    apply_overrides(Config(), [shown])  # and the hint works


@pytest.mark.parametrize("value, shown", [
    (10**23, "100000000000000000000000 is too large"),  # 24 digits: still shown whole
    (10**24, "100000000000... (25 digits) is too large"),
    (-(10**400), "-10000000000... (401 digits) is too large"),  # the minus sign is no digit
])
def test_a_number_too_large_is_shown_by_its_digits(value, shown):
    assert _error({"train.max_steps": value}) == f"train.max_steps = {shown} (at most 2**64)"


def test_a_config_that_is_not_a_table_and_unknown_sections_are_named():
    with pytest.raises(ConfigError, match=r"^a config must be a table of sections, got list$"):
        config_from_dict([("train", {})])
    with pytest.raises(ConfigError, match=r"^unknown config section\(s\) optim, training; valid sections: model, "):
        config_from_dict({"training": {}, "optim": {}, "train": {}})


def test_config_to_dict_gives_lists_for_tuples():
    cfg = apply_overrides(Config(), ['model.channels=[8, "M"]', 'finetune.freeze=["features"]'])
    data = config_to_dict(cfg)
    assert (data["model"]["channels"], data["finetune"]["freeze"], data["optimizer"]["betas"]) == (
        [8, "M"], ["features"], [0.7, 0.9])


def test_a_file_of_now_keeps_the_optimizer_keys_it_sets(tmp_path):
    # Only a config.toml an older mnistlab wrote (every [optimizer] key) has its stored momentum and eps dropped:
    # a file that sets Adam's momentum keeps it, so the run warns that Adam does not read it.
    path = tmp_path / "mine.toml"
    path.write_text('[optimizer]\nname = "adam"\nmomentum = 0.9\neps = 1e-8\n', encoding="utf-8")
    optimizer = load_config(path).optimizer
    assert (optimizer.momentum, optimizer.eps) == (0.9, 1e-8)


def test_a_file_that_is_not_toml_is_named(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train]\nepochs = \n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"config file {path} is not valid TOML: ")


def test_values_that_are_false_or_zero_or_empty_round_trip_through_config_toml(tmp_path):
    # mutant: falsy values written as "# key = (default)" comments, read back as the defaults
    cfg = apply_overrides(Config(), ["data.val_size=0", "data.download=false", "tensorboard.enabled=false",
                                     "train.report=false", "augment.rotation=0", "model.hidden=[]", "model.crop=0",
                                     "optimizer.name=sgd", "optimizer.momentum=0", "train.threads=1"])
    text = config_to_toml(cfg)
    for line in ("val_size = 0", "download = false", "hidden = []", "crop = 0", "momentum = 0.0", "rotation = 0.0"):
        assert line in text.splitlines()
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == cfg


def test_config_toml_records_what_an_unset_optimizer_key_trains_with():
    lines = config_to_toml(apply_overrides(Config(), ["optimizer.name=adadelta"])).splitlines()
    assert "# eps = (default: 1e-06, adadelta's)" in lines
    assert "# rho = (default: 0.9, adadelta's)" in lines
    assert "# momentum = (default)" in lines  # Adadelta has no momentum
    lines = config_to_toml(apply_overrides(Config(), ["optimizer.name=sgd"])).splitlines()
    assert "# momentum = (default: 0.9, sgd's)" in lines


def test_diff_from_default_lists_only_the_keys_that_differ():
    assert diff_from_default(Config()) == {}
    cfg = apply_overrides(Config(), ["train.epochs=5", 'model.channels=[8, "M"]', "data.train_limit=none"])
    assert diff_from_default(cfg) == {"train.epochs": 5, "model.channels": [8, "M"]}


# --- what the audit found the overrides read wrongly ---------------------------------------------------------


def test_a_value_with_a_line_break_is_not_read_as_its_first_line():
    # "3\nx = 4" was read as TOML, 3 kept and the rest dropped unseen; it is refused as what it is
    assert "train.epochs = '3\\nx = 4' has the wrong type; expected int" in _error(["train.epochs=3\nx = 4"])
    # a list may still span lines, as TOML writes one
    assert apply_overrides(Config(), ["model.channels=[8,\n16]"]).model.channels == (8, 16)


def test_a_list_with_floats_written_as_python_writes_them_is_read():
    # --lr .5 and --set optimizer.lr=.5 worked; in a list .9 was "read as text, not a list", and class_weights,
    # which also takes the word "balanced", said "got '[1,.5]'" as if no list had been typed
    cfg = apply_overrides(Config(), ["optimizer.betas=[.9, .99]", "train.class_weights=[1,.5,1,1,1,1,1,1,1,-.0]"])
    assert cfg.optimizer.betas == (0.9, 0.99)
    assert cfg.train.class_weights == (1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0)
    # a text key keeps its brackets as typed (a folder may be named so); a broken list is still refused
    assert apply_overrides(Config(), ["data.dir=[.5]"]).data.dir == "[.5]"
    assert "read as text, not a list" in _error(["optimizer.betas=[.9, .x]"])


def test_an_integer_with_leading_zeros_is_read_as_the_flags_read_it():
    # --epochs 03 trained 3 epochs; --set train.epochs=03 was "the wrong type; expected int" (TOML refuses 03)
    assert apply_overrides(Config(), ["train.epochs=03"]).train.epochs == 3
    assert "has the wrong type; expected int" in _error(["train.epochs=3.0"])
