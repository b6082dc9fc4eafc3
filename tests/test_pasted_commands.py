"""Commands that messages tell the user to paste into a shell name the folder or file as one shell word."""

from __future__ import annotations

import shlex

import pytest

from mnistlab.config import load_config
from mnistlab.errors import ConfigError
from mnistlab.folders import shell_path
from mnistlab.training.run import _how_to_go_on


@pytest.mark.parametrize("path, words", [("my runs/a", ["my runs/a"]), ("-x", ["./-x"]), ("plain", ["plain"]),
                                         ("it's", ["it's"])])
def test_a_path_is_one_word_and_never_a_flag(path, words):
    assert shlex.split(shell_path(path)) == words


def test_a_sweep_file_given_to_train_is_named_runnably(tmp_path, monkeypatch):
    # `mnistlab sweep my sweeps/s.toml`, as the message had it, is two arguments: the sweep refused the first
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my sweeps").mkdir()
    for path in (tmp_path / "my sweeps" / "s.toml", tmp_path / "-s.toml"):
        path.write_text('[sweep]\nparams = {"optimizer.lr" = [0.1]}\n', encoding="utf-8")
        with pytest.raises(ConfigError, match="is a sweep file") as info:
            load_config(path.relative_to(tmp_path))
        command = str(info.value).split("run it with `")[1].split("`")[0]
        assert shlex.split(command)[:2] == ["mnistlab", "sweep"]
        assert (tmp_path / shlex.split(command)[2]).resolve() == path.resolve()


def test_the_advice_to_delete_a_run_folder_names_it_as_one_word(tmp_path):
    # no last.ckpt: the advice is to delete the folder; `rm -r -x` would be read as flags
    folder = tmp_path / "-x"
    folder.mkdir()
    advice = _how_to_go_on(folder)
    assert f"delete {shell_path(folder)} and start the run anew" in advice
    assert "delete ./-x and start the run anew" in _how_to_go_on(folder.relative_to(tmp_path))
