"""What a run prints: a progress bar per epoch and one table row per epoch."""

from __future__ import annotations

import os
import sys
import time
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

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:  # the reader of the output left; a training run is not lost for that
            self.quiet, self.bar = True, False
            divert_to_devnull(self.out)

    def log(self, text: str) -> None:
        if not self.quiet:
            self._write(text + "\n")

    def progress(self, epoch: int, epochs: int, done: int, total: int, loss: float, acc: float) -> None:
        now = time.monotonic()
        if not self.bar or (now - self._last_draw < 0.1 and done < total):
            return
        self._last_draw = now
        width = 30
        filled = int(width * done / max(total, 1))
        self._write(
            f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
            f"  loss {loss:.4f}  acc {100 * acc:.2f}%"
        )

    def epoch_row(self, m: dict) -> None:
        if self.bar:
            self._write("\r\033[K")  # clear the progress bar line
        ema = [100 * m["ema_val_accuracy"]] if "ema_val_accuracy" in m else []
        columns = COLUMNS[:5] + [EMA_COLUMN] * len(ema) + COLUMNS[5:]
        if not self._header_done:
            self.log("  ".join(h.format(name) for name, h, _ in columns))
            self._header_done = True
        values = [int(m["epoch"]), m["train_loss"], 100 * m["train_accuracy"], m["val_loss"], 100 * m["val_accuracy"],
                  *ema, m["lr"], m["seconds"]]
        self.log("  ".join(fmt.format(v) for (_, _, fmt), v in zip(columns, values)))
