"""What a run prints on a terminal: the progress line fits the terminal's width and leaves nothing behind."""

from __future__ import annotations

import io
import itertools
import os
import shutil
import types

import pytest

from mnistlab.errors import ConfigError
from mnistlab.training import display as display_module
from mnistlab.training.display import Display

METRICS = {"epoch": 1, "train_loss": 0.31, "train_accuracy": 0.91, "val_loss": 0.22, "val_accuracy": 0.94,
           "lr": 1e-3, "seconds": 3.2}


class Terminal(io.StringIO):
    """A dumb terminal ``columns`` wide: it shows escape codes as text, takes ``\\r`` and ``\\n``, and wraps
    at its last column, as some terminals do (``\\r`` then goes back to the start of the wrapped row only)."""

    def __init__(self, columns: int) -> None:
        super().__init__()
        self.columns = columns

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        rows, row, col = [[]], 0, 0
        for ch in self.getvalue():
            if ch in "\r\n":
                row, col = row + (ch == "\n"), 0
            else:
                cells = rows[row]
                cells[col:col + 1] = ch if col < len(cells) else " " * (col - len(cells)) + ch
                row, col = (row + 1, 0) if col + 1 == self.columns else (row, col + 1)
            rows += [[] for _ in range(row + 1 - len(rows))]
        return ["".join(r).rstrip() for r in rows if "".join(r).strip()]


@pytest.fixture
def terminal(monkeypatch):
    """A Terminal of 40 columns that shutil.get_terminal_size reports, TERM=dumb, and no 0.1 s between redraws."""
    term = Terminal(40)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a, **k: os.terminal_size((term.columns, 24)))
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setattr(display_module, "time", types.SimpleNamespace(monotonic=itertools.count(1).__next__))
    return term


def test_the_progress_line_fits_a_narrow_terminal_and_the_table_row_replaces_it(terminal):
    # The ~70-character line wrapped on 40 columns, and each redraw stacked another partial line on the screen;
    # the row after it was cleared with "\033[K", which a dumb terminal shows as text.
    d = Display(out=terminal)
    for done in range(0, 470, 50):
        d.progress(1, 5, done, 469, 2.3 - done / 300, done / 500)
        screen = terminal.screen()
        assert len(screen) == 1 and len(screen[0]) <= 39 and screen[0].startswith("epoch 1/5 ["), screen
    d.epoch_row(METRICS)
    assert "\033" not in terminal.getvalue()
    table = io.StringIO()
    Display(out=table).epoch_row(METRICS)
    lines = table.getvalue().splitlines()
    assert terminal.screen() == [line[i:i + 40].rstrip() for line in lines for i in range(0, len(line), 40)]


def test_the_progress_line_follows_a_resize_and_gives_up_parts_on_a_very_narrow_terminal(terminal):
    d = Display(out=terminal)
    drawn = {}
    for columns in (120, 60, 40, 25, 12):
        terminal.columns = columns
        before = len(terminal.getvalue())
        d.progress(3, 10, 100, 469, 0.1234, 0.9567)
        drawn[columns] = terminal.getvalue()[before:].removeprefix("\r")
        assert len(drawn[columns]) <= columns - 1, drawn
    assert drawn[120] == "epoch 3/10 [" + "#" * 6 + "." * 24 + "] 100/469  loss 0.1234  acc 95.67%"
    assert drawn[60].startswith("epoch 3/10 [") and drawn[60].rstrip().endswith("  loss 0.1234  acc 95.67%")
    assert drawn[40].startswith("epoch 3/10 [") and drawn[40].rstrip().endswith("]  acc 95.67%")
    assert drawn[25].rstrip().startswith("epoch 3/10 [") and drawn[25].rstrip().endswith("]")
    assert drawn[12].rstrip() == "epoch 3/10"  # no room for a bar of 10


def test_a_dumb_terminal_gets_no_escape_codes_spaces_blank_out_what_a_longer_line_left(terminal):
    # "\r\033[K" cleared the line for the table row; a dumb terminal (an editor's shell) shows the escape as text
    terminal.columns = 100
    d = Display(out=terminal)
    d.progress(1, 5, 10, 469, 12.3456, 0.10)
    d.progress(1, 5, 20, 469, 12.3456, 0.10)  # the time left comes with the second draw: a longer line
    d.progress(1, 5, 30, 469, 2.3456, 0.10)  # one character shorter
    assert terminal.screen() == ["epoch 1/5 [#" + "." * 29 + "]  30/469  loss 2.3456  acc 10.00%  ETA 0:44"]
    d.epoch_row(METRICS)
    table = io.StringIO()
    Display(out=table).epoch_row(METRICS)
    assert "\033" not in terminal.getvalue() and terminal.screen() == table.getvalue().splitlines()


def test_a_message_logged_mid_epoch_starts_on_a_line_of_its_own(terminal, monkeypatch):
    # A callback's message through the "mnistlab" logger was written at the end of the progress bar
    # ("... acc 18.29%epoch 1: reducing learning r"), and the bar's remains stayed on the screen.
    import logging
    import sys

    from mnistlab.training.run import callback_messages

    monkeypatch.setattr(sys, "stdout", terminal)
    d = Display(out=terminal)
    d.progress(1, 2, 10, 20, 2.2, 0.18)
    with callback_messages(True, always=True):
        logging.getLogger("mnistlab").warning("epoch 1: reducing the learning rate")
    d.progress(1, 2, 20, 20, 2.0, 0.3)
    screen = terminal.screen()
    assert screen[0] == "epoch 1: reducing the learning rate" and screen[1].startswith("epoch 1/2 [")
    d.log("a line")  # Display's own lines too
    assert terminal.screen()[1:] == ["a line"]


def test_a_python_warning_mid_epoch_starts_on_a_line_of_its_own(terminal, monkeypatch):
    """PyTorch's and other libraries' warnings go through Python's warnings module, not mnistlab's logger."""
    import warnings

    from mnistlab.training.display import progress_safe_warnings

    # Python prints a warning on stderr, the same screen as the bar (pytest records them instead: print here)
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                        terminal.write(warnings.formatwarning(message, category, filename, lineno, line)))
    d = Display(out=terminal)
    d.progress(1, 2, 10, 20, 2.2, 0.18)
    before = warnings.showwarning
    with warnings.catch_warnings(), progress_safe_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's warning", UserWarning)
    assert warnings.showwarning is before  # put back
    screen = "".join(terminal.screen())  # the terminal is narrow: the warning wraps
    assert screen.startswith(__file__) and "UserWarning: a library's warning" in screen, screen
    assert "epoch 1/2" not in screen  # the bar was blanked out first


@pytest.mark.parametrize("error", [ConfigError("a bad setting"), ValueError("a bug")])
def test_an_error_that_ends_a_run_mid_epoch_starts_on_a_line_of_its_own(terminal, monkeypatch, error):
    """`mnistlab train`'s error line (or a bug's traceback) began at the end of the progress bar."""
    import sys

    from mnistlab import cli

    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)

    def run(args):
        d = Display(out=terminal)  # alive while the error is handled, through the traceback, as a run's is
        d.progress(1, 2, 10, 20, 2.2, 0.18)
        raise error

    monkeypatch.setattr(cli, "_cmd_models", run)
    if isinstance(error, ConfigError):
        assert cli.main(["models"]) == 2
        assert terminal.screen()[0] == "mnistlab models: error: a bad setting"
    else:
        with pytest.raises(ValueError):
            cli.main(["models"])
        assert terminal.screen() == []  # blanked, for the traceback Python prints next


class Clock:
    """A monotonic clock the test moves: ``clock.now = 12.5``."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_the_time_left_and_the_rate_are_measured_from_the_first_batch_drawn_in_the_epoch(terminal, monkeypatch):
    terminal.columns = 120
    clock = Clock()
    monkeypatch.setattr(display_module, "time", clock)
    d = Display(out=terminal)
    clock.now = 100.0
    d.progress(1, 2, 1, 21, 2.3, 0.1, images=256)  # the first batch: its one-off costs are not measured
    assert "ETA" not in terminal.screen()[0] and "img/s" not in terminal.screen()[0]
    clock.now = 104.0  # 4 batches of 256 in 4 s, 16 to go
    d.progress(1, 2, 5, 21, 2.0, 0.3, images=5 * 256)
    assert terminal.screen()[0].endswith("  5/21  loss 2.0000  acc 30.00%  256 img/s  ETA 0:16")
    # A resumed epoch, or the next one: measured from its own first batch drawn
    clock.now = 200.0
    d.progress(2, 2, 11, 21, 0.5, 0.8, images=11 * 256)
    assert "ETA" not in terminal.screen()[0]
    clock.now = 202.0  # 2 batches in 2 s, 8 to go
    d.progress(2, 2, 13, 21, 0.5, 0.8, images=13 * 256)
    assert terminal.screen()[0].endswith("  256 img/s  ETA 0:08")


def test_validation_and_testing_show_a_bar_that_the_next_line_replaces(terminal):
    terminal.columns = 80
    d = Display(out=terminal)
    d.progress(1, 2, 20, 20, 2.0, 0.3)
    d.evaluating("epoch 1/2 validating", 2500, 5000)
    assert terminal.screen() == ["epoch 1/2 validating [" + "#" * 15 + "." * 15 + "] 2,500/5,000"]
    d.epoch_row(METRICS)
    table = io.StringIO()
    Display(out=table).epoch_row(METRICS)
    assert terminal.screen() == table.getvalue().splitlines()
    d.evaluating("testing best.ckpt", 10_000, 10_000)
    d.log("test accuracy 99.00%")
    assert terminal.screen()[-1] == "test accuracy 99.00%"
    quiet = io.StringIO()  # not a terminal: no bar
    Display(out=quiet).evaluating("testing best.ckpt", 500, 10_000)
    assert quiet.getvalue() == ""


def run_on_terminal(mnist_root, tmp_path, monkeypatch, *overrides: str) -> Terminal:
    """The Terminal a small cnn run drew on (100 columns, no time between redraws), with ``overrides``."""
    import sys

    from mnistlab.config import Config, apply_overrides
    from mnistlab.training.run import train

    terminal = Terminal(100)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a, **k: os.terminal_size((100, 24)))
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(display_module, "time", types.SimpleNamespace(monotonic=itertools.count(1).__next__))
    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=500", "tensorboard.enabled=false",
                                     "model.name=cnn", "model.width=0.25", "train.threads=1", *overrides])
    train(cfg, out=tmp_path / "run", report=False)
    return terminal


def test_a_run_on_a_terminal_shows_its_validation_and_its_test(mnist_root, tmp_path, monkeypatch):
    # alexnet validates 5,000 images in about 90 s on a 2-core CPU and tests 10,000 in 3 minutes: the screen
    # stood still after the last batch's bar.
    terminal = run_on_terminal(mnist_root, tmp_path, monkeypatch, "data.val_size=300", "train.epochs=1",
                               "train.eval_batch_size=100")
    drawn = terminal.getvalue()
    for line in ("epoch 1/1 validating [" + "#" * 30 + "] 300/300", "testing best.ckpt [" + "#" * 30 + "] 10,000/10,000"):
        assert line in drawn
    assert "epoch 1/1 validating [" + "#" * 10 + "." * 20 + "] 100/300" in drawn  # drawn as it goes
    screen = terminal.screen()
    assert any(row.startswith("test accuracy ") for row in screen)
    assert not any("[#" in row for row in screen)  # no bar left behind


def test_a_run_that_max_steps_ends_counts_its_bars_to_where_it_ends(mnist_root, tmp_path, monkeypatch):
    # 500 images in batches of 256: 2 steps an epoch; 3 steps of 3 epochs end after 1 batch of epoch 2
    drawn = run_on_terminal(mnist_root, tmp_path, monkeypatch, "data.val_size=100", "train.epochs=3",
                            "train.max_steps=3").getvalue()
    assert "epoch 1/2 [" + "#" * 30 + "] 2/2" in drawn and "epoch 2/2 [" + "#" * 30 + "] 1/1" in drawn
    assert "epoch 2/2 validating [" in drawn and "epoch 3/" not in drawn


def test_a_jupyter_notebook_cell_gets_the_bars_too(monkeypatch):
    # An IPython kernel's stream is no terminal, so a notebook showed nothing for a whole epoch; its frontends
    # take "\r" back to the line's start, as a terminal does.
    class OutStream(io.StringIO):
        pass

    OutStream.__module__ = "ipykernel.iostream"
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a, **k: os.terminal_size((80, 24)))
    cell = OutStream()
    d = Display(out=cell)
    d.progress(1, 2, 10, 20, 2.0, 0.1)
    assert cell.getvalue().startswith("\repoch 1/2 [")
    assert not Display(out=io.StringIO()).bar  # a file or a pipe: the table only
    assert not Display(out=OutStream(), progress=False).bar  # train.progress = false
