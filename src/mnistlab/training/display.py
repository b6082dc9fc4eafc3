"""What a run prints: a progress bar per epoch and one table row per epoch."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import warnings
import weakref
from typing import TextIO


def divert_to_devnull(stream: TextIO) -> None:
    """After a BrokenPipeError on ``stream`` (`mnistlab train | head`: the reader left): point its file
    descriptor at /dev/null, so that every later write to it (this run's lines, the logging handler's,
    the interpreter's last flush) succeeds and goes nowhere. The run itself goes on."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor has no pipe to break
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


COLUMNS = [
    ("epoch", "{:>5}", "{:>5d}"),
    ("train_loss", "{:>10}", "{:>10.4f}"),
    ("train_acc", "{:>9}", "{:>8.2f}%"),
    ("val_loss", "{:>9}", "{:>9.4f}"),
    ("val_acc", "{:>8}", "{:>7.2f}%"),
    ("lr", "{:>9}", "{:>9.2e}"),
    ("seconds", "{:>7}", "{:>7.1f}"),
]
EMA_COLUMN = ("ema_val_acc", "{:>11}", "{:>10.2f}%")  # shown before lr when [ema] is enabled
BAR, MIN_BAR = 30, 10  # characters of the progress bar: on a wide terminal, and the fewest worth drawing


def progress_line(epoch: int, epochs: int, done: int, total: int, loss: float, acc: float, room: int) -> str:
    """The progress bar's line in at most ``room`` characters. On a narrower terminal the bar shrinks
    first; then the count goes (the bar shows the same), then the loss, then the accuracy (the epoch's
    table row has both), then the bar gives way to the count.

    >>> progress_line(2, 5, 50, 100, 0.25, 0.9, 79)
    'epoch 2/5 [###############...............] 50/100  loss 0.2500  acc 90.00%'
    >>> progress_line(2, 5, 50, 100, 0.25, 0.9, 39)
    'epoch 2/5 [#######........]  acc 90.00%'
    """
    head, count = f"epoch {epoch}/{epochs}", f" {done}/{total}"
    loss_text, acc_text = f"  loss {loss:.4f}", f"  acc {100 * acc:.2f}%"
    for tail in (count + loss_text + acc_text, loss_text + acc_text, acc_text, ""):
        width = min(BAR, room - len(head) - len(tail) - 3)  # 3: " [" and "]"
        if width >= MIN_BAR:
            filled = int(width * done / max(total, 1))
            return f"{head} [{'#' * filled}{'.' * (width - filled)}]{tail}"
    return (head + count)[:room]  # no room for a bar: the count shows the progress instead


def _room() -> int:
    """Characters a line may have on the terminal, read anew each time so that a resize is followed. One
    less than its width: a character in the last column wraps on some terminals, and ``\\r`` then goes back
    only to the start of the wrapped row, leaving every redraw stacked on the screen."""
    return shutil.get_terminal_size().columns - 1


_drawing: weakref.ref | None = None  # the Display whose progress line is on the terminal now


def clear_progress_line() -> None:
    """Blank the progress line a Display has on the terminal, so that a line printed now (a callback's message
    through logging) starts on a line of its own instead of at the end of the bar."""
    display = _drawing() if _drawing is not None else None
    if display is not None:
        display._clear()


@contextlib.contextmanager
def progress_safe_warnings():
    """In the block, a Python warning (PyTorch's, a library's) blanks the progress line before it is printed,
    as the mnistlab logger's messages do, instead of starting at the end of the bar."""
    shown = warnings.showwarning

    def show(*args, **kwargs) -> None:
        clear_progress_line()
        shown(*args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:  # not if someone replaced it in the meantime: theirs stays
            warnings.showwarning = shown


class Display:
    """Prints the epoch table to ``out``; the progress bar only when ``out`` is a terminal."""

    def __init__(self, quiet: bool = False, progress: bool = True, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        # No stream at all (sys.stdout is None under pythonw or some service hosts): nothing to print to.
        self.quiet = quiet or self.out is None
        isatty = getattr(self.out, "isatty", None)
        self.bar = progress and not self.quiet and callable(isatty) and isatty()
        self._header_done = False
        self._last_draw = 0.0
        self._drawn = 0  # characters of the progress line on the screen, for the next draw to blank out

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:  # the reader of the output left; a training run is not lost for that
            self.quiet, self.bar = True, False
            divert_to_devnull(self.out)

    def log(self, text: str) -> None:
        if not self.quiet:
            self._clear()
            self._write(text + "\n")

    def _clear(self) -> None:
        if self.bar and self._drawn:  # blank out the progress line
            self._write("\r" + " " * min(self._drawn, _room()) + "\r")
            self._drawn = 0

    def progress(self, epoch: int, epochs: int, done: int, total: int, loss: float, acc: float) -> None:
        now = time.monotonic()
        if not self.bar or (now - self._last_draw < 0.1 and done < total):
            return
        self._last_draw = now
        room = _room()
        line = progress_line(epoch, epochs, done, total, loss, acc, room)
        # Spaces, not the erase-line escape, blank out the rest of a longer line drawn before: a dumb
        # terminal (TERM=dumb, an editor's shell) prints escapes as text.
        self._write("\r" + line.ljust(min(self._drawn, room)))
        self._drawn = len(line)
        global _drawing
        _drawing = weakref.ref(self)

    def epoch_row(self, m: dict) -> None:
        self._clear()
        ema = [100 * m["ema_val_accuracy"]] if "ema_val_accuracy" in m else []
        columns = COLUMNS[:5] + [EMA_COLUMN] * len(ema) + COLUMNS[5:]
        if not self._header_done:
            self.log("  ".join(h.format(name) for name, h, _ in columns))
            self._header_done = True
        values = [int(m["epoch"]), m["train_loss"], 100 * m["train_accuracy"], m["val_loss"], 100 * m["val_accuracy"],
                  *ema, m["lr"], m["seconds"]]
        self.log("  ".join(fmt.format(v) for (_, _, fmt), v in zip(columns, values)))
