"""The metrics of every epoch, in memory and as metrics.csv in the run folder."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .base import Callback, TrainerHandle


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` as the checkpoints are written (a temporary file renamed over ``path``): readers never
    see half a file."""
    from ..training.checkpoint import atomic_write  # here: the training package imports the callbacks

    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class History(Callback):
    """One row of metrics per epoch: ``rows`` in memory, and ``metrics.csv`` in the run folder.

    The columns are the keys of the first epoch's metrics (keys that appear
    later are appended). The rows are part of the checkpointed state and the
    whole file is rewritten atomically after every epoch, so a resumed run
    rewrites exactly the epochs it has (rows of epochs the checkpoint did not
    reach are dropped, none is written twice). Floats are written with full
    precision. Without ``path`` and without a run folder, only ``rows`` is kept.

    Metrics that callbacks after this one add to the epoch's dict in their
    ``on_epoch_end`` (Keras' ``logs["f1"] = ...``) are taken into the epoch's
    row too: the row is brought up to date from that dict when the next epoch
    begins, when training ends and when the state is checkpointed.

    >>> h = History()
    >>> h.rows            # after fit: [{"epoch": 1, "train_loss": ..., ...}, ...]
    []
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.rows: list[dict[str, Any]] = []
        self._file: Path | None = None
        # The last epoch's number and the trainer's metrics dict itself: the callbacks after this one (a user's
        # are given after the run's own) may still add to it, and the trainer checkpoints what they added.
        self._live: tuple[int, dict[str, Any]] | None = None
        self._written: str | None = None  # the text last written to the file

    def on_train_begin(self, trainer: TrainerHandle) -> None:
        self.rows = []
        self._live = self._written = None
        run_dir = trainer.run_dir
        self._file = self.path if self.path is not None else (Path(run_dir) / "metrics.csv" if run_dir else None)
        if not trainer.is_main:  # under torchrun rank 0 writes the file; the rows are kept on every rank
            self._file = None

    def on_epoch_begin(self, epoch: int, trainer: TrainerHandle) -> None:
        self._save()  # with what the other callbacks added to the last epoch's metrics

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [{**metrics, "epoch": int(epoch)}]
        self._live = (int(epoch), metrics)
        self._save()  # now, too: a run that crashes before the next epoch keeps this one's row

    def on_train_end(self, metrics: dict[str, Any], trainer: TrainerHandle) -> None:
        self._save()
        self._live = None

    def _sync(self) -> None:
        """Copy the last epoch's metrics into its row again, with what callbacks added after ``on_epoch_end``."""
        if self._live is not None and self.rows and self.rows[-1]["epoch"] == self._live[0]:
            self.rows[-1] = {**self._live[1], "epoch": self._live[0]}

    def _save(self) -> None:
        if self._live is None:  # no epoch of this run yet: the file is as the last epoch left it
            return
        self._sync()
        if self._file is not None:
            text = self.to_csv()
            if text != self._written:
                _atomic_write_text(self._file, text)
                self._written = text

    def to_csv(self) -> str:
        columns: dict[str, None] = {}
        for row in self.rows:
            columns.update(dict.fromkeys(row))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    def state_dict(self) -> dict[str, Any]:
        self._sync()  # the trainer checkpoints after every callback's on_epoch_end: the row is complete now
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state["rows"]]
        self._live = None


__all__ = ["History"]
