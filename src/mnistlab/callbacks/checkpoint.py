"""Keep the best checkpoint, the k best, and one every n epochs."""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any

from ..config import (MAX_CHECKPOINT_NAME, RUN_FILE_NAMES, RUN_FOLDER_NAMES, CheckpointConfig,
                      check_checkpoint_filename)
from ..errors import ConfigError
from .base import EPOCH_METRICS, Callback, MonitorMixin, TrainerHandle, checked_setting


def _template_fields(template: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"checkpoint file name template {template!r} is not valid: {e}") from None


class ModelCheckpoint(MonitorMixin, Callback):
    """Save checkpoints chosen by a monitored metric, as Keras' and Lightning's callbacks do.

    After every epoch:

    * if ``monitor`` improved on its best value, the checkpoint is written to
      ``save_best_as`` (``best.ckpt``; None: not written);
    * ``save_top_k`` > 0: the k best epochs are kept as files named by the
      ``filename`` template (any metric of the epoch, e.g.
      ``"epoch{epoch:03d}-{val_loss:.4f}.ckpt"``); a file that falls out of the
      top k is deleted (ties keep the earlier epoch);
    * ``every_n_epochs`` > 0: every n-th epoch is also kept under the template
      name, and never deleted;
    * a name that a kept file (or, in the run folder, one of the run's own
      files such as best.ckpt), or in a ``dirpath`` a file already there
      (another run's, where runs share it), has gets ``-v1``, ``-v2``, ...
      before its suffix, as in Lightning: nothing is overwritten, and so
      nothing of another run's is later deleted as if it were one of ours.

    "Keep the last" is the trainer's job: it writes ``last.ckpt`` (the resume
    state) after every epoch. Files go to ``dirpath`` (default: the run folder);
    every write goes through ``trainer.save_checkpoint``, which is atomic.

    >>> cb = ModelCheckpoint(monitor="val_loss", save_top_k=3, filename="epoch{epoch:03d}-{val_loss:.4f}.ckpt")
    >>> cb.mode
    'min'
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        monitor: str = "val_accuracy",
        mode: str = "auto",
        save_best_as: str | None = "best.ckpt",
        save_top_k: int = 1,
        every_n_epochs: int = 0,
        filename: str = "epoch{epoch:03d}-{val_accuracy:.4f}.ckpt",
    ) -> None:
        save_top_k = checked_setting("ModelCheckpoint", "save_top_k", save_top_k, integer=True)
        every_n_epochs = checked_setting("ModelCheckpoint", "every_n_epochs", every_n_epochs, integer=True)
        if save_top_k < 0 or every_n_epochs < 0:
            raise ConfigError(f"save_top_k and every_n_epochs must be 0 or more, got {save_top_k} and {every_n_epochs}")
        unknown = sorted(set(_template_fields(filename)) - set(EPOCH_METRICS))
        if unknown:
            raise ConfigError(
                f"checkpoint file name template {filename!r} uses unknown field(s) {', '.join(unknown)}; "
                f"valid fields: {', '.join(EPOCH_METRICS)}"
            )
        check_checkpoint_filename(filename, run_names=False)  # no folder, NUL, or name too long
        self._init_monitor(monitor, mode)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.save_best_as = save_best_as
        self.save_top_k = int(save_top_k)
        self.every_n_epochs = int(every_n_epochs)
        self.filename = filename
        self._reset()

    def _reset(self) -> None:
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        # Files are recorded as ``_path`` gives them, relative to the run folder (or under an absolute
        # dirpath), not as written: a run folder given as a relative path must still be found when the run
        # is resumed from another working folder, or after the folder was moved.
        self.kept: list[tuple[float, int, str]] = []  # (value, epoch, file) of the top k, best first
        self.periodic: list[str] = []  # files kept every n epochs

    def on_train_begin(self, trainer: TrainerHandle) -> None:
        self._reset()
        if not trainer.is_main:  # under torchrun the other ranks choose as rank 0 does, and rank 0 writes
            return
        # Said now, not after the first epoch's training, where the first save found nowhere to write.
        if trainer.run_dir is None and (self.dirpath is None or not self.dirpath.is_absolute()):
            where = "no dirpath" if self.dirpath is None else f"the relative dirpath {str(self.dirpath)!r}"
            raise ConfigError(f"ModelCheckpoint has nowhere to write: the run has no folder and {where} was given; "
                              "give fit(..., run_dir=FOLDER), or ModelCheckpoint(dirpath=...) an absolute folder")
        if self.dirpath is not None:  # made as Keras' and Lightning's are; a missing one failed the first save
            folder = self._on_disk(str(self.dirpath), trainer)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"ModelCheckpoint cannot make its folder {folder}: {e.strerror or e}") from None
            self._remove_killed_writes(folder)

    def _remove_killed_writes(self, folder: Path) -> None:
        """Delete the temporary files (``.NAME.tmp-PID``, see ``atomic_write``) that a run killed while writing one
        of our files left in ``folder``. The run folder's are removed when its lock is taken over; a dirpath
        outside it kept them for good, each as big as a checkpoint. Those of a live process (another run sharing
        the folder) stay."""
        from ..training.run import process_alive  # here: training imports this module

        ours = {Path(self.filename).suffix} | ({Path(self.save_best_as).suffix} if self.save_best_as else set())
        for tmp in folder.glob(".*.tmp-*"):
            name, _, pid = tmp.name[1:].rpartition(".tmp-")
            if pid.isdigit() and Path(name).suffix in ours and not process_alive(int(pid)):
                tmp.unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        # A relative path is taken under the run folder by trainer.save_checkpoint.
        return self.dirpath / name if self.dirpath is not None else Path(name)

    @staticmethod
    def _on_disk(file: str, trainer: TrainerHandle) -> Path:
        path = Path(file)
        return trainer.run_dir / path if not path.is_absolute() and trainer.run_dir is not None else path

    def _name(self, epoch: int, metrics: dict[str, float]) -> str:
        fields = {**metrics, "epoch": int(epoch)}
        try:
            name = self.filename.format(**fields)
        except (KeyError, ValueError) as e:
            raise ConfigError(
                f"checkpoint file name template {self.filename!r} does not fit the metrics ({e}); "
                f"valid fields: {', '.join(sorted(fields))}"
            ) from None
        if len(name.encode()) <= MAX_CHECKPOINT_NAME:
            return name
        # A runaway value ("{val_loss:.4f}" of a loss of 1e250) would make a name no file system takes, and
        # stop the run: cut it short, keeping its suffix (.ckpt).
        suffix = Path(name).suffix if len(Path(name).suffix) <= 16 else ""
        room = MAX_CHECKPOINT_NAME - len(suffix.encode())
        return name[: len(name) - len(suffix)].encode()[:room].decode(errors="ignore") + suffix

    def _free_path(self, name: str, trainer: TrainerHandle) -> Path:
        """``name``'s path, or with -v1, -v2, ... before its suffix where a file we keep, or one in ``dirpath``, has
        that name (in a dirpath two runs share, the second wrote over the first's files and then deleted them as
        its own when they left its top k). The run folder is the run's alone: a file there is its own, written
        for an epoch a kill -9 came after, which the resumed run writes again under the same name, as the
        uninterrupted one did.

        A template without ``{epoch}`` (``acc{val_accuracy:.2f}.ckpt``) gives two epochs one name; so can
        one that names a file the run writes itself (best.ckpt). Overwriting would replace a kept epoch
        with another and leave top-k with one file; Lightning appends a version too.
        """
        taken = {p for _, _, p in self.kept} | set(self.periodic)
        if self.dirpath is None:
            taken |= set(RUN_FILE_NAMES + RUN_FOLDER_NAMES) | ({self.save_best_as} if self.save_best_as else set())
        path, n = self._path(name), 0
        # Only where files are written: the other ranks of a torchrun run would see the file rank 0 just wrote.
        on_disk = self.dirpath is not None and trainer.is_main
        while str(path) in taken or (on_disk and self._on_disk(str(path), trainer).exists()):
            n += 1
            path = self._path(f"{Path(name).stem}-v{n}{Path(name).suffix}")
        return path

    def _ranks_above(self, value: float, other: float) -> bool:
        return value < other if self.mode == "min" else value > other

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        value = self._value(metrics)
        if self._is_improvement(value, self.best_value):
            self.best_value, self.best_epoch = value, epoch
            if self.save_best_as:
                trainer.save_checkpoint(self._path(self.save_best_as))
        saved: str | None = None  # this epoch's template file, written at most once

        def save() -> str:
            nonlocal saved
            if saved is None:
                file = self._free_path(self._name(epoch, metrics), trainer)
                trainer.save_checkpoint(file)
                saved = str(file)
            return saved

        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            path = save()
            if path not in self.periodic:
                self.periodic.append(path)
        if self.save_top_k and math.isfinite(value):
            if len(self.kept) < self.save_top_k or self._ranks_above(value, self.kept[-1][0]):
                self.kept.append((value, epoch, save()))
        # Stable sort: among equal values the earlier epoch ranks first and stays.
        self.kept.sort(key=lambda item: item[0], reverse=self.mode == "max")
        # Drop what is beyond k (also after a resume with a smaller save_top_k); new files are written first.
        dropped, self.kept = self.kept[self.save_top_k :], self.kept[: self.save_top_k]
        keep = {p for _, _, p in self.kept} | set(self.periodic)
        for _, _, file in dropped:
            if file not in keep and trainer.is_main:  # the other ranks of a torchrun run wrote nothing
                self._on_disk(file, trainer).unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "kept": [[v, e, p] for v, e, p in self.kept],
            "periodic": list(self.periodic),
            **self._monitor_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints written before files were recorded relative to the run folder hold the path as written
        # (the run folder's path joined to the name); files in the run folder itself are known by their name.
        def file(p: Any) -> str:
            return Path(p).name if self.dirpath is None else str(p)

        self.periodic = [file(p) for p in state["periodic"]]
        kept = [(float(v), int(e), file(p)) for v, e, p in state["kept"]]
        if self._same_monitor(state):
            self.best_value = state["best_value"]
            self.best_epoch = state["best_epoch"]
            self.kept = kept
        else:  # the top k ranked by the old monitor are no longer ranked: their files stay, as the periodic ones do
            self.periodic += [p for _, _, p in kept if p not in self.periodic]

    @classmethod
    def from_config(cls, cfg: CheckpointConfig, dirpath: str | Path | None = None) -> "ModelCheckpoint":
        return cls(
            dirpath=dirpath,
            monitor=cfg.monitor,
            mode=cfg.mode,
            save_top_k=cfg.save_top_k,
            every_n_epochs=cfg.every_n_epochs,
            filename=cfg.filename,
        )


def check_apart(callbacks: list[Callback]) -> None:
    """A ConfigError where two ModelCheckpoints would write the same files: the same best file, or the same
    filename template, in the same ``dirpath``. A user's ``ModelCheckpoint(monitor="val_loss")`` given to
    ``train`` wrote best.ckpt beside the run's own (by ``checkpoint.monitor``), each replacing the other's, and
    deleted the run's top-k files as they left its own top k (each counts only the files it wrote)."""
    from .base import BUILT_IN  # the callbacks build_callbacks made from the config

    def files(cb: ModelCheckpoint) -> set[str]:
        names = {f"the best file {cb.save_best_as!r}"} if cb.save_best_as else set()
        if cb.save_top_k or cb.every_n_epochs:
            names.add(f"the files named by {cb.filename!r}")
        return names

    def which(cb: ModelCheckpoint) -> str:
        if getattr(cb, BUILT_IN, False):
            return f"the run's own ModelCheckpoint ([checkpoint], monitor {cb.monitor})"
        return f"a ModelCheckpoint (monitor {cb.monitor})"

    checkpoints = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    for i, first in enumerate(checkpoints):
        for second in checkpoints[i + 1 :]:
            both = sorted(files(first) & files(second))
            if first.dirpath == second.dirpath and both:
                where = "the run folder" if first.dirpath is None else str(first.dirpath)
                raise ConfigError(
                    f"{which(first)} and {which(second)} would both write {' and '.join(both)} in {where}, "
                    "replacing each other's files (and deleting those the other keeps): give one of them another "
                    "dirpath, filename or save_best_as (None writes no best file)")


__all__ = ["ModelCheckpoint"]
