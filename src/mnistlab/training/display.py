"""What a run prints: a progress bar per epoch (and while it validates or tests) and one table row per epoch."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import warnings
import weakref
from typing import Callable, TextIO


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


def _cell(fmt: str, value: float) -> str:
    """A table cell as wide as its column's header: a number the fixed format makes wider (a diverging but
    finite loss of 3.5e13 took 20 characters and pushed every later column out of line) is written in
    scientific notation with as many digits as the column has room for. Whole numbers (the epoch) stay whole.

    >>> _cell("{:>10.4f}", 0.25), _cell("{:>10.4f}", 34716385702260.15), _cell("{:>7.1f}", 123456.7)
    ('    0.2500', '3.4716e+13', '1.2e+05')
    """
    text = fmt.format(value)
    width = len(fmt.format(0))  # the cell's width: every format here pads to its column
    if len(text) <= width or isinstance(value, int):
        return text
    for digits in range(max(width - 6, 0), -1, -1):  # d.dddde+XX: 6 characters besides the digits
        short = f"{value:>{width}.{digits}e}"
        if len(short) <= width:
            return short
    return text  # no room even for 1e+300: as wide as it takes


def clock(seconds: float) -> str:
    """A duration as a clock shows it.

    >>> clock(42.4), clock(754), clock(3723)
    ('0:42', '12:34', '1:02:03')
    """
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _bar_line(head: str, done: int, total: int, tails: tuple[str, ...], count: str, room: int) -> str:
    """``head [####....]tail`` in at most ``room`` characters, with the first of ``tails`` (longest first)
    that leaves a bar of MIN_BAR or more; with none, the head and ``count``."""
    for tail in tails:
        width = min(BAR, room - len(head) - len(tail) - 3)  # 3: " [" and "]"
        if width >= MIN_BAR:
            filled = int(width * done / max(total, 1))
            return f"{head} [{'#' * filled}{'.' * (width - filled)}]{tail}"
    return (head + count)[:room]  # no room for a bar: the count shows the progress instead


def progress_line(epoch: int, epochs: int, done: int, total: int, loss: float, acc: float, room: int,
                  rate: float | None = None, eta: float | None = None) -> str:
    """The progress bar's line in at most ``room`` characters. On a narrower terminal the bar shrinks
    first; then the rate goes, then the count (the bar shows the same), then the loss, then the accuracy
    (the epoch's table row has both), then the time left; then the bar gives way to the count.

    >>> progress_line(2, 5, 50, 100, 0.25, 0.9, 79)
    'epoch 2/5 [###############...............]  50/100  loss 0.2500  acc 90.00%'
    >>> progress_line(2, 5, 50, 100, 0.25, 0.9, 99, rate=3120.5, eta=75)
    'epoch 2/5 [###############...............]  50/100  loss 0.2500  acc 90.00%  3,120 img/s  ETA 1:15'
    >>> progress_line(2, 5, 50, 100, 0.25, 0.9, 49, rate=3120.5, eta=75)
    'epoch 2/5 [#######........]  acc 90.00%  ETA 1:15'
    """
    head, count = f"epoch {epoch}/{epochs}", f" {done:>{len(str(total))}}/{total}"  # as wide all epoch long
    loss_text, acc_text = f"  loss {loss:.4f}", f"  acc {100 * acc:.2f}%"
    rate_text = f"  {rate:,.0f} img/s" if rate is not None else ""
    eta_text = f"  ETA {clock(eta)}" if eta is not None else ""
    tails = (count + loss_text + acc_text + rate_text + eta_text, count + loss_text + acc_text + eta_text,
             loss_text + acc_text + eta_text, acc_text + eta_text, eta_text, "")
    return _bar_line(head, done, total, tails, count, room)


def evaluation_line(what: str, done: int, total: int, room: int) -> str:
    """The line shown while a model is validated or tested (minutes for the big models on a CPU).

    >>> evaluation_line("epoch 1/3 validating", 2500, 5000, 79)
    'epoch 1/3 validating [###############...............] 2,500/5,000'
    """
    count = f" {done:,}/{total:,}"
    return _bar_line(what, done, total, (count, ""), count, room)


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
        display.clear()


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


def shows_progress(out: TextIO) -> bool:
    """Whether a progress bar redrawn with ``\r`` shows as one line on ``out``: a terminal, or the output of a
    Jupyter notebook's cell (an IPython kernel's stream, which is no terminal; JupyterLab, Colab and VS Code
    take ``\r`` back to the line's start), where a student would otherwise see nothing for a whole epoch."""
    isatty = getattr(out, "isatty", None)
    if callable(isatty) and isatty():
        return True
    return type(out).__module__.split(".")[0] == "ipykernel"


class Display:
    """Prints the epoch table to ``out``; the progress bar only where it shows as one line (:func:`shows_progress`)."""

    def __init__(self, quiet: bool = False, progress: bool = True, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        # No stream at all (sys.stdout is None under pythonw or some service hosts): nothing to print to.
        self.quiet = quiet or self.out is None
        self.bar = progress and not self.quiet and shows_progress(self.out)
        self._header_done = False
        self._last_draw = 0.0
        self._drawn = 0  # characters of the progress line on the screen, for the next draw to blank out
        self._since: tuple[int, int, float, float] | None = None  # epoch, batch, images and time at its first draw

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:  # the reader of the output left; a training run is not lost for that
            self.quiet, self.bar = True, False
            divert_to_devnull(self.out)

    def log(self, text: str) -> None:
        if not self.quiet:
            self.clear()
            self._write(text + "\n")

    def clear(self) -> None:
        """Blank out the progress line, if one is drawn, for what is printed next."""
        if self.bar and self._drawn:
            self._write("\r" + " " * min(self._drawn, _room()) + "\r")
            self._drawn = 0

    def progress(self, epoch: int, epochs: int, done: int, total: int, loss: float, acc: float,
                 images: float | None = None) -> None:
        """Batch ``done`` of ``total`` of the epoch has trained (``images``: the images of the epoch so far)."""
        if not self.bar:
            return
        now = time.monotonic()
        # The rate is measured from the first batch this display saw in the epoch (a resumed epoch starts
        # inside), so the first batch's one-off costs (memory, oneDNN's kernel choices) do not count.
        if self._since is None or self._since[0] != epoch or done <= self._since[1]:
            self._since = (epoch, done, images or 0.0, now)
        _, batch0, images0, t0 = self._since
        rate = eta = None
        if done > batch0 and now > t0:
            eta = (now - t0) / (done - batch0) * (total - done)
            rate = (images - images0) / (now - t0) if images is not None else None
        if now - self._last_draw < 0.1 and done < total:
            return
        self._draw(progress_line(epoch, epochs, done, total, loss, acc, _room(), rate, eta), now)

    def evaluating(self, what: str, done: int, total: int) -> None:
        """``done`` of ``total`` images evaluated; ``what``: "epoch 2/5 validating", "testing best.ckpt"."""
        now = time.monotonic()
        if self.bar and (now - self._last_draw >= 0.1 or done >= total):
            self._draw(evaluation_line(what, done, total, _room()), now)

    def evaluation_progress(self, what: str) -> Callable[[int, int], None]:
        """``evaluate``'s ``progress`` callback for a bar named ``what``."""
        return lambda done, total: self.evaluating(what, done, total)

    def _draw(self, line: str, now: float) -> None:
        self._last_draw = now
        # Spaces, not the erase-line escape, blank out the rest of a longer line drawn before: a dumb
        # terminal (TERM=dumb, an editor's shell) prints escapes as text.
        self._write("\r" + line.ljust(min(self._drawn, _room())))
        self._drawn = len(line)
        global _drawing
        _drawing = weakref.ref(self)

    def epoch_row(self, m: dict) -> None:
        self.clear()
        ema = [100 * m["ema_val_accuracy"]] if "ema_val_accuracy" in m else []
        columns = COLUMNS[:5] + [EMA_COLUMN] * len(ema) + COLUMNS[5:]
        if not self._header_done:
            self.log("  ".join(h.format(name) for name, h, _ in columns))
            self._header_done = True
        values = [int(m["epoch"]), m["train_loss"], 100 * m["train_accuracy"], m["val_loss"], 100 * m["val_accuracy"],
                  *ema, m["lr"], m["seconds"]]
        self.log("  ".join(_cell(fmt, v) for (_, _, fmt), v in zip(columns, values)))
