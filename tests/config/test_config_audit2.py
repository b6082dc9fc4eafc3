import re

import pytest

from mnistlab.config import Config, apply_overrides, config_to_toml, load_config
from mnistlab.errors import ConfigError


def test_a_config_path_starting_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    # `mnistlab train --config=~/my.toml` reaches load_config with its ~ (bash expands one only at the start of a
    # word): it was "config file ~/my.toml does not exist", while data.dir's ~ is the home folder.
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my.toml").write_text("[train]\nepochs = 7\n", encoding="utf-8")
    assert load_config("~/my.toml").train.epochs == 7


def test_a_folder_given_as_the_config_file_is_one_clear_line(tmp_path):
    # It was "cannot read config file runs/x: [Errno 21] Is a directory: 'runs/x'"; a run folder's own
    # config.toml is named.
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ConfigError, match=r"^config file \S+run is a folder, not a TOML file$"):
        load_config(run)
    (run / "config.toml").write_text(config_to_toml(Config()), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not a TOML file; a run folder's settings are in \S+config.toml"):
        load_config(run)


def test_a_nul_in_the_config_path_is_a_config_error():
    # the Python API: a bare ValueError ("embedded null byte") came out of load_config
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("my\0.toml")


@pytest.mark.parametrize("override, shown", [
    # Python's tuple: the hint was --set 'optimizer.betas=["(0.9", "0.99)"]', two strings that are wrong again
    ("optimizer.betas=(0.9, 0.99)", "optimizer.betas=[0.9, 0.99]"),
    # one word, as --freeze takes it: the plain "wrong type; expected a list" gave no way to write it
    ("finetune.freeze=features", 'finetune.freeze=["features"]'),
    # spaces between the values, as --freeze separates them
    ("finetune.freeze=features classifier.1", 'finetune.freeze=["features", "classifier.1"]'),
    # a name of e's and digits is a name: "e" was left bare, as if a number, and the hint was wrong again
    ("finetune.freeze=e,features.0", 'finetune.freeze=["e", "features.0"]'),
])
def test_a_list_without_brackets_is_shown_in_brackets(override, shown):
    with pytest.raises(ConfigError, match=r"a list is written in brackets: --set '" + re.escape(shown)):
        apply_overrides(Config(), [override])
    apply_overrides(Config(), [shown])  # and the hint works


def test_a_path_for_finetune_init_from_is_taken_where_sections_are_built(tmp_path):
    # data.dir and apply_overrides took a pathlib.Path; FinetuneConfig(init_from=Path(...)), replace() on the
    # section and config_from_dict were "has the wrong type; expected str | None"
    from dataclasses import replace

    from mnistlab.config import FinetuneConfig, config_from_dict

    run = tmp_path / "run"
    assert FinetuneConfig(init_from=run).init_from == str(run)
    assert replace(Config().finetune, init_from=run).init_from == str(run)
    cfg = config_from_dict({"finetune": {"init_from": run}, "data": {"dir": tmp_path}})
    assert (cfg.finetune.init_from, cfg.data.dir) == (str(run), str(tmp_path))
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg), encoding="utf-8")
    assert load_config(path) == cfg


def test_overrides_that_are_not_a_list_of_strings_are_config_errors():
    # a single string was read character by character ("override 't' must look like section.key=value"), and a
    # (key, value) pair was an AttributeError
    with pytest.raises(ConfigError, match=r"put it in a list: \['train.epochs=3'\]"):
        apply_overrides(Config(), "train.epochs=3")
    for bad in (("train.epochs", 3), 3):
        with pytest.raises(ConfigError, match=r"must be a string like 'section.key=value'.*or give a dict"):
            apply_overrides(Config(), [bad])
    assert apply_overrides(Config(), ("train.epochs=3",)).train.epochs == 3  # any sequence of strings


def test_a_file_that_is_not_text_is_said_to_be_so(tmp_path):
    # `--config seven.png` printed Python's "'utf-8' codec can't decode byte 0x89 in position 0: ..."
    image = tmp_path / "seven.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ConfigError, match=r"config file \S+seven.png is not a text file \(byte 0 is not UTF-8\): a "
                                          r"config is TOML text"):
        load_config(image)
