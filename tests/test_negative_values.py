"""A negative number in exponent form after a flag is its value, as -0.5 is: argparse read `--lr -1e-3` as a
flag ("expected one argument"), so the config's own message ("must be greater than zero") never came."""

import pytest

from mnistlab.cli import main


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "-1e-3"], "optimizer.lr must be greater than zero, got -0.001"),
    (["train", "--lr", "-5E-1"], "optimizer.lr must be greater than zero, got -0.5"),
    (["train", "--lr", "-.5"], "optimizer.lr must be greater than zero, got -0.5"),
    (["lr-find", "--min-lr", "-1e-7"], "the range test needs 0 < min_lr < max_lr, got min_lr=-1e-07"),
])
def test_a_negative_value_reaches_its_check(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--data-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_a_flag_after_a_flag_is_still_missing_its_value(capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's own error, on one line
        main(["train", "--lr", "-x"])
    assert stop.value.code == 2
    assert "argument --lr: expected one argument" in capsys.readouterr().err
