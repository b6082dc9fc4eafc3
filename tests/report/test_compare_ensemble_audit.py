"""Audit of `mnistlab compare` and `mnistlab ensemble`: cases found wrong, each checked against the fix."""

from __future__ import annotations

import json
from pathlib import Path

from mnistlab.cli import main
from mnistlab.report.compare import compare_runs, find_runs

RUN_CONFIG = '[model]\nname = "cnn"\n\n[data]\ndataset = "mnist"\n\n[train]\nepochs = 3\n'


def fake_run(folder, **summary):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"dataset": "mnist", "device": "cpu", **summary}))
    return folder


def test_compare_searches_a_folder_of_runs_that_keeps_its_config_beside_them(tmp_path, capsys):
    # `mnistlab train --config exp/config.toml --out exp/r1`: exp holds the config and the runs. It was taken
    # for one unfinished run (a table of one row "exp ... not finished"), and exp/r1, exp/r2 were left out.
    exp = tmp_path / "exp"
    fake_run(exp / "r1", model="cnn", test_accuracy=0.97, train_seconds=10.0)
    fake_run(exp / "r2", model="lenet5", test_accuracy=0.98, train_seconds=20.0)
    (exp / "config.toml").write_text(RUN_CONFIG)
    assert find_runs([exp]) == [exp / "r1", exp / "r2"]
    assert [r.model for r in compare_runs([exp])] == ["lenet5", "cnn"]
    # Another tool's config.toml beside runs is no run either.
    (exp / "config.toml").write_text("[tool]\nx = 1\n")
    assert find_runs([exp]) == [exp / "r1", exp / "r2"]
    assert main(["compare", str(exp), "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "not finished" not in out


def test_compare_still_lists_a_run_stopped_in_its_first_epoch(tmp_path, capsys):
    first = tmp_path / "first"
    (first / "tensorboard").mkdir(parents=True)
    (first / "config.toml").write_text(RUN_CONFIG)
    assert find_runs([first]) == [first]
    assert find_runs([tmp_path]) == [first]
    assert [r.stop_reason for r in compare_runs([first])] == ["not finished (no summary.json)"]
    # A folder with only another tool's config.toml holds no run: said in one line, not a row of "?".
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text("[tool]\nx = 1\n")
    assert main(["compare", str(other), "--plot", str(tmp_path / "c.png")]) == 2
    assert "holds no run folders" in capsys.readouterr().err


def test_at_equal_accuracy_a_run_without_a_training_time_ranks_last_not_first(tmp_path):
    # ties were broken on train_seconds or 0: a run whose time was not recorded ranked as the fastest
    fake_run(tmp_path / "timed", model="cnn", test_accuracy=0.98, train_seconds=5.0)
    fake_run(tmp_path / "untimed", model="cnn", test_accuracy=0.98)
    assert [Path(r.run).name for r in compare_runs([tmp_path])] == ["timed", "untimed"]


def test_compare_json_says_on_stderr_where_it_wrote_the_plot(tmp_path, capsys, monkeypatch):
    # the plot (compare.png in the current folder by default) was written without a word in --json mode
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "runs" / "a", model="cnn", test_accuracy=0.98, train_seconds=5.0)
    assert main(["compare", "runs", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [row["model"] for row in json.loads(out)] == ["cnn"]
    assert err.strip() == "plot of test accuracy against training time: compare.png"
    assert (tmp_path / "compare.png").is_file()
