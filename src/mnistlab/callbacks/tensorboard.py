"""TensorBoard logging through ``torch.utils.tensorboard`` (no TensorFlow needed).

What one run writes into ``<run>/tensorboard`` (so ``tensorboard --logdir runs``
shows every run, named ``<run>/tensorboard``):

* scalars per epoch: ``loss/train``, ``loss/val``, ``accuracy/train``,
  ``accuracy/val``, ``lr`` and, with ``[ema]``, ``loss/ema_val`` and
  ``accuracy/ema_val`` (the weight average's);
* per epoch too, any other number a callback adds to the epoch's metrics (Keras'
  ``logs["f1"] = ...``), under its own name (``f1``), as metrics.csv has it;
* histograms every ``histogram_every_n_epochs`` epochs: ``weights/<parameter>``
  and ``gradients/<parameter>`` (the gradient of the epoch's last batch);
* the model graph (traced once on two validation images);
* images: ``inputs/samples`` (the first 64 validation images, at step 0) and,
  per epoch, ``misclassified/val`` (up to 64 misclassified validation images)
  with their true and predicted labels as text ``misclassified/labels``;
* at the end: the hyperparameters with the final metrics (HParams dashboard,
  metric tags ``final/...``: the last epoch's, and after :meth:`TensorBoard.add_run_summary`
  the tested model's ``final/test_accuracy``, ``final/best_epoch``, ...) and the stop
  reason as text ``stop_reason``, at the step after the last epoch.

Every other step is the epoch number. Every ``log_every_n_steps`` optimizer
steps, ``loss/train_step`` and ``lr/step`` go into the sub-folder ``steps``
(the run ``<run>/tensorboard/steps``) with the global step as their step.

The end-of-run summary goes into an event file of its own (suffix ``.end``) in
the same folder, which a resumed run deletes before it writes its own: a reader
that ignores purge markers (the HParams dashboard's) showed the old one beside
the new. A run resumed after epoch e (or inside its first epoch) also purges
the events from step e + 1 on, those of an interrupted epoch, and in ``steps``
those after its checkpoint's global step. So nothing appears twice.

Events are written in the calling thread (see :class:`_EventFile`): a failed
write raises ``OSError`` naming the events file.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import numbers
import os
import shlex
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import EPOCH_METRICS, TensorBoardConfig
from ..errors import ConfigError, RunDirError
from .base import Callback, TrainerHandle, checked_setting

log = logging.getLogger("mnistlab")

_END_SUFFIX = ".end"  # the event file of the end-of-run summary
_STEPS_DIR = "steps"  # the per-step scalars' sub-folder: a folder has one purge step for all its tags (on_train_begin)

_SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "lr": "lr",
    "ema_val_loss": "loss/ema_val",  # with [ema]
    "ema_val_accuracy": "accuracy/ema_val",
}
_STEP_SCALARS = {"loss": "loss/train_step", "lr": "lr/step"}  # of on_batch_end's metrics
# The trainer's own keys of an epoch's metrics: logged under _SCALARS' tags, or not at all (the errors are
# 1 - the accuracies). Any other number in the dict is a callback's (Keras' logs["f1"]) and keeps its name.
_OWN = frozenset(EPOCH_METRICS) | frozenset(_SCALARS)
_FINAL = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "ema_val_loss", "ema_val_accuracy", "epoch")
# summary.json's numbers for the tested model (best.ckpt, often not the last epoch): add_run_summary adds them.
_SUMMARY = ("test_accuracy", "test_loss", "best_epoch", "best_val_accuracy", "ema_test_accuracy", "ema_best_epoch",
            "tta_test_accuracy", "ema_tta_test_accuracy")


def _hparam_value(v: Any) -> bool | int | float | str:
    """The HParams plugin takes numbers, strings and bools; lists and None are written as text."""
    if isinstance(v, (bool, int, float, str)):
        return v
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


def _final(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    """``{"final/<key>": value}`` for the keys whose values are finite numbers (null test accuracies are left out)."""
    return {
        f"final/{k}": float(values[k])
        for k in keys
        if isinstance(values.get(k), (int, float)) and not isinstance(values[k], bool) and math.isfinite(values[k])
    }


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images.float()


def _count(name: str, value: Any) -> int:
    """A setting that is a whole number, 0 or more (0: off), or a ConfigError naming it."""
    value = checked_setting("TensorBoard", name, value, integer=True)
    if value < 0:
        raise ConfigError(f"TensorBoard: {name} must be 0 or more (0: off), got {value}")
    return value


_LAST_BUCKET = 1e20  # the largest bucket edge of add_histogram's default ("tensorflow") bins


class TensorBoard(Callback):
    """Write scalars, histograms, the graph, image grids and hyperparameters for TensorBoard.

    ``log_dir`` defaults to ``<run folder>/tensorboard`` (nothing is written
    when neither exists). ``hparams`` is a flat ``{name: value}`` dict (e.g.
    ``{"optimizer.lr": 0.01}``); :func:`~mnistlab.callbacks.build_callbacks`
    passes the whole resolved config. ``log_every_n_steps``: the training loss
    and learning rate every n optimizer steps (0: off); ``histogram_every_n_epochs``:
    the histograms at the epochs divisible by n (0: off, as ``histograms=False``).

    Gradients: the hook ``on_batch_end`` keeps *references* (no copy, no
    device sync) to the parameters' ``.grad`` tensors after each optimizer
    step of an epoch with histograms, and drops them in ``on_batch_begin``, so
    at ``on_epoch_end`` it holds the gradients of the epoch's last batch whatever
    the trainer does with ``.grad`` afterwards (``zero_grad(set_to_none=True)``
    replaces the tensors and leaves the referenced ones intact). Only an in-place
    zeroing between the last ``on_batch_end`` and ``on_epoch_end`` would hide them.

    >>> cb = TensorBoard(hparams={"model.name": "cnn", "optimizer.lr": 0.01}, log_every_n_steps=10)
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        histograms: bool = True,
        graph: bool = True,
        images: bool = True,
        hparams: dict[str, Any] | None = None,
        max_images: int = 64,
        log_every_n_steps: int = 50,
        histogram_every_n_epochs: int = 1,
    ) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.histograms = histograms
        self.graph = graph
        self.images = images
        self.hparams = dict(hparams or {})
        # Checked as the config checks [tensorboard]: the Python API took anything, and max_images=-1 logged all
        # validation images but one as the samples' grid, log_every_n_steps=-1 logged every step, 2.5 steps 5,
        # 10, ... and histogram_every_n_epochs=-1 turned the histograms off without a word.
        self.max_images = _count("max_images", max_images)
        self.log_every_n_steps = _count("log_every_n_steps", log_every_n_steps)
        self.histogram_every_n_epochs = _count("histogram_every_n_epochs", histogram_every_n_epochs)
        self.writer = None
        self._steps_writer = None
        self._log_dir: Path | None = None  # None: nothing to write (another rank, or no folder)
        self._epochs_purge: int | None = None
        self._steps_purge: int | None = None
        self._grads: dict[str, torch.Tensor] | None = None
        self._added: tuple[int, dict[str, Any]] | None = None  # the last epoch and its metrics, for _log_added
        self._end: dict[str, Any] | None = None  # what on_train_end wrote into the .end file, for add_run_summary
        self._end_file: Path | None = None
        self._run_dir: Path | None = None  # for the advice when add_run_summary cannot write

    @classmethod
    def from_config(cls, cfg: TensorBoardConfig, hparams: dict[str, Any] | None = None) -> "TensorBoard":
        """The callback for a ``[tensorboard]`` section (``enabled`` is the caller's to check).

        >>> TensorBoard.from_config(TensorBoardConfig(log_every_n_steps=10)).log_every_n_steps
        10
        """
        return cls(histograms=cfg.histograms, graph=cfg.graph, images=cfg.images, hparams=hparams,
                   log_every_n_steps=cfg.log_every_n_steps, histogram_every_n_epochs=cfg.histogram_every_n_epochs)

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, trainer: TrainerHandle) -> None:
        # A callback reused after a run that ended without on_train_end (an error, Ctrl-C in a notebook) held
        # that run's open writers: the next run's steps went into the old run's folder, and a resume of it
        # wrote its epochs into the old file, without the purge marker, so they showed twice.
        self._close_writers()
        self._log_dir = self._grads = self._added = self._end = self._end_file = None
        if not trainer.is_main:  # under torchrun rank 0 logs; a writer per rank would log every point twice
            return
        log_dir = self.log_dir or (Path(trainer.run_dir) / "tensorboard" if trainer.run_dir else None)
        if log_dir is None:
            log.warning("TensorBoard: the run has no folder and no log_dir was given; nothing is written")
            return
        self._run_dir = Path(trainer.run_dir) if trainer.run_dir else None
        # A resumed run (also one cut inside its first epoch, still at epoch 0) has the graph and samples
        # already; resumed after epoch e, it drops the events of epochs > e and the old end-of-run summary.
        resumed = trainer.step > 0
        if resumed:  # the finished run's summary: this run writes its own at the end
            for old in Path(log_dir).glob(f"events.out.tfevents.*{_END_SUFFIX}"):
                old.unlink(missing_ok=True)
        self._log_dir = Path(log_dir)
        # The writers are made at their first event (the per-step scalars' at the first step logged: a run
        # shorter than log_every_n_steps listed an empty run), a resumed run's with the purge marker that drops
        # what the interrupted part wrote after its checkpoint. A resume that trains nothing (its epochs done,
        # only the test left) added two events files holding nothing but that marker.
        # A resume into a folder without events (tensorboard.enabled was false before it, or log_dir is new) has
        # no graph and samples yet, nor anything to purge: it begins as a new run does (it wrote neither).
        begins = not resumed or not _event_stamps(self._log_dir)
        self._epochs_purge = None if begins else trainer.epoch + 1
        self._steps_purge = trainer.step + 1 if resumed else None
        if begins:
            self._open_epochs_writer()
            if self.graph:
                self._add_graph(trainer)
            if self.images:
                images, _ = trainer.validation_data()
                self._add_grid("inputs/samples", images[: self.max_images], step=0)

    def on_epoch_begin(self, epoch: int, trainer: TrainerHandle) -> None:
        self._log_added()

    def on_batch_begin(self, step: int, trainer: TrainerHandle) -> None:
        self._grads = None  # let the previous batch's gradients go before this backward pass

    def on_batch_end(self, step: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        if self._log_dir is None:
            return
        if self._histograms_at(trainer.epoch + 1):  # trainer.epoch is the one before this batch's
            self._grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
        if self.log_every_n_steps and step % self.log_every_n_steps == 0:
            if self._steps_writer is None:
                self._open_steps_writer()
            # Python floats: the trainer reads the loss every step already (its non-finite check), so this
            # adds no device sync; still only every n steps, to keep the events file small.
            for key, tag in _STEP_SCALARS.items():
                if key in metrics:
                    self._steps_writer.add_scalar(tag, float(metrics[key]), step)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        if self._log_dir is None:
            return
        if self.writer is None:
            self._open_epochs_writer()
        for key, tag in _SCALARS.items():
            if key in metrics:
                self.writer.add_scalar(tag, float(metrics[key]), epoch)
        if self._histograms_at(epoch):
            for name, p in trainer.model.named_parameters():
                self._add_histogram(f"weights/{name}", p, epoch)
            for name, g in (self._grads or {}).items():
                self._add_histogram(f"gradients/{name}", g, epoch)
            self._grads = None
        if self.images:
            self._add_misclassified(trainer, epoch)
        self._added = (epoch, metrics)

    def state_dict(self) -> dict[str, Any]:
        """No state; but the trainer asks for it as it writes last.ckpt, after every callback's ``on_epoch_end``:
        the epoch's added numbers are written now. A run interrupted after the epoch (a signal during its
        validation or saves) reaches neither the next epoch's start nor ``on_train_end``, and its resume purges
        only the epochs after this checkpoint's: the epoch kept its scalars but lost these (metrics.csv has them).
        """
        self._log_added()
        return {}

    def _log_added(self) -> None:
        """The numbers callbacks added to the last epoch's metrics (metrics.csv has them), under their own names.
        Written at the next epoch's start or the run's end, not in on_epoch_end: the callbacks after this one (a
        user's come after the run's own) add theirs after it. They were in metrics.csv only."""
        if self._added is None or self.writer is None:
            return
        epoch, metrics = self._added
        self._added = None
        for key, value in metrics.items():
            if torch.is_tensor(value) and value.numel() == 1:  # a one-value tensor, as metrics.csv takes it
                value = value.item()
            if key not in _OWN and isinstance(value, numbers.Real) and not isinstance(value, bool):  # NumPy's too
                self.writer.add_scalar(key, float(value), epoch)

    def on_train_end(self, metrics: dict[str, Any], trainer: TrainerHandle) -> None:
        if self._log_dir is None:
            return
        self._log_added()
        # A resume that wrote no epoch made no epochs writer, so no purge marker: the epochs an interrupted part
        # wrote after its checkpoint (killed between on_epoch_end and last.ckpt, resumed with nothing left to
        # train) stayed, though metrics.csv has them not. The summary's file carries the marker then.
        purge = self._epochs_purge if self.writer is None else None
        if self._steps_writer is None and _logged_from(self._log_dir / _STEPS_DIR, self._steps_purge):
            # The same gap in steps/, which has no summary file to carry the marker: one with the marker alone,
            # made only where a step at or after it is there to drop (else the resume adds a file of nothing).
            self._open_steps_writer()
            self._steps_writer._get_file_writer()  # writes the purge marker, which waits for a first event
        self._close_writers()
        self._end = {
            "step": int(metrics.get("epoch", trainer.epoch)) + 1,  # after the last epoch's step
            "final": _final(metrics, _FINAL),
            "stop_reason": metrics.get("stop_reason"),
            "purge": purge,
        }
        self._write_end()

    def add_run_summary(self, summary: dict[str, Any]) -> None:
        """Add the tested model's numbers to the end-of-run summary, after ``on_train_end``.

        ``summary`` is summary.json's dict: its ``test_accuracy``, ``test_loss``, ``best_epoch``,
        ``best_val_accuracy`` and, with ``[ema]`` / ``[tta]``, the ``ema_`` / ``tta_`` test accuracies
        become ``final/<key>`` beside the last epoch's numbers, so the HParams dashboard compares runs by
        what summary.json reports (best.ckpt is often not the last epoch). The test comes after training,
        so this rewrites the ``.end`` file that ``on_train_end`` wrote; nothing is done if it wrote none.
        A failed write raises :class:`~mnistlab.errors.RunDirError` naming the file.

        >>> tb.add_run_summary({"test_accuracy": 0.9921, "best_epoch": 3})  # doctest: +SKIP
        """
        if self._end is None:
            return
        self._end["final"].update(_final(summary, _SUMMARY))
        try:
            self._write_end()
        except OSError as e:  # after the run's own error handling: say here which file, why and what to do
            # The run has trained and been tested (summary.json is written); resuming it as it is trains
            # nothing, tests it again and writes what came after the test: this file, the report.
            again = (f"`mnistlab train --resume {shlex.quote(str(self._run_dir))}` tests the run again and writes it"
                     if self._run_dir is not None else "write it again")
            raise RunDirError(f"cannot write the TensorBoard run summary {e.filename}: {e.strerror or e}; the "
                              f"checkpoints and summary.json are kept: once the folder can be written again (room "
                              f"on the disk, write access), {again}") from None

    # -- pieces -------------------------------------------------------------------

    def _close_writers(self) -> None:
        for writer in (self.writer, self._steps_writer):
            if writer is not None:
                writer.close()
        self.writer = self._steps_writer = None

    def _open_epochs_writer(self) -> None:
        self.writer = _summary_writer(self._log_dir, _purge_step(self._log_dir, self._epochs_purge))

    def _open_steps_writer(self) -> None:
        # A folder of their own: readers drop every tag's events from a folder's purge step on, and the
        # epochs purge from epoch e + 1, which as a step number would drop nearly all of these.
        steps = self._log_dir / _STEPS_DIR
        self._steps_writer = _summary_writer(steps, _purge_step(steps, self._steps_purge))

    def _histograms_at(self, epoch: int) -> bool:
        n = self.histogram_every_n_epochs
        return self.histograms and n > 0 and epoch % n == 0

    def _write_end(self) -> None:
        """The hyperparameters with the final metrics and the stop reason, into a new ``.end`` file in place
        of the one this run wrote before: after the last epoch's step, into its own file, which a resumed run
        deletes, so there is one summary per run whatever the reader (the HParams dashboard would show two
        sessions' start info)."""
        from torch.utils.tensorboard.summary import hparams

        if self._end_file is not None:
            self._end_file.unlink(missing_ok=True)
            self._end_file = None
        writer = _summary_writer(self._log_dir, self._end["purge"], filename_suffix=_END_SUFFIX)
        path = writer.file_writer.event_writer.path
        step, final = self._end["step"], self._end["final"]
        # What SummaryWriter.add_hparams does, but into this writer's own folder: one run, one event stream.
        exp, ssi, sei = hparams({k: _hparam_value(v) for k, v in self.hparams.items()}, final)
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary, step)
        for tag, value in final.items():
            writer.add_scalar(tag, value, step)
        if self._end["stop_reason"]:
            writer.add_text("stop_reason", str(self._end["stop_reason"]), step)
        writer.close()
        self._end_file = _sort_last(path)

    def _add_graph(self, trainer: TrainerHandle) -> None:
        model = trainer.model
        images, _ = trainer.validation_data()
        try:
            device = next(model.parameters()).device
            sample = _as_float_images(images[:2].to(device))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation warnings are not the user's business
                self.writer.add_graph(model, sample)  # traces in eval mode; model.training is restored
        except OSError:  # the events file could not be written: the run's error, not the model's
            raise
        except Exception as e:  # a model that cannot be traced must not stop training
            log.warning("TensorBoard: could not trace the model graph (%s: %s); skipping it", type(e).__name__, e)

    def _add_histogram(self, tag: str, tensor: torch.Tensor, step: int) -> None:
        values = tensor.detach().float().cpu()
        if values.numel() == 0:
            return
        if not torch.isfinite(values).all():
            log.warning("TensorBoard: %s has non-finite values at epoch %d; histogram skipped", tag, step)
            return
        # TensorBoard's default buckets end at 1e20: weights all beyond it (a run diverging, still finite) fell in
        # none, and add_histogram raised "The histogram is empty", which ended the run with a traceback.
        bins = "auto" if float(values.abs().max()) >= _LAST_BUCKET else "tensorflow"
        self.writer.add_histogram(tag, values, step, bins=bins)

    def _add_grid(self, tag: str, images: torch.Tensor, step: int) -> None:
        from torchvision.utils import make_grid

        if images.shape[0] == 0:
            return
        grid = make_grid(_as_float_images(images.cpu()), nrow=8, padding=2, pad_value=0.5)
        self.writer.add_image(tag, grid, step)

    def _add_misclassified(self, trainer: TrainerHandle, epoch: int, chunk: int = 2000) -> None:
        images, labels = trainer.validation_data()
        wrong_x, wrong_y, wrong_p, found = [], [], [], 0
        # Chunk by chunk, so an early epoch with many errors does not predict the whole split.
        for i in range(0, images.shape[0], chunk):
            pred = trainer.predict(images[i : i + chunk]).argmax(1).cpu()
            y = labels[i : i + chunk].cpu()
            bad = (pred != y).nonzero().flatten()[: self.max_images - found]
            wrong_x.append(images[i : i + chunk][bad.to(images.device)].cpu())
            wrong_y.append(y[bad])
            wrong_p.append(pred[bad])
            found += bad.numel()
            if found >= self.max_images:
                break
        if not found:
            return
        self._add_grid("misclassified/val", torch.cat(wrong_x), epoch)
        pairs = ", ".join(f"{int(t)}→{int(p)}" for t, p in zip(torch.cat(wrong_y), torch.cat(wrong_p)))
        self.writer.add_text("misclassified/labels", f"true→predicted, row by row: {pairs}", epoch)


# -- the events file ------------------------------------------------------------------

_PREFIX = "events.out.tfevents."


class _EventFile:
    """tensorboard's EventFileWriter without its writer thread: each event is appended in the calling thread.

    From that thread a failed write (a full disk) printed "Exception in thread ..." with a traceback on stderr
    and reached the run later as an OSError without a file name. Here the add_* call itself raises the OSError,
    with the events file as its ``filename`` (the run reports it as a RunDirError). Events are few (tens per
    epoch), so writing each at once costs nothing measurable; a reader sees it at once, too.
    """

    _uid = itertools.count()  # the name's last part: one process's files made in the same second differ

    def __init__(self, log_dir: str, filename_suffix: str = "") -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._log_dir = log_dir
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        # EventFileWriter's name, which readers order the files by (see _sort_last)
        self.path = Path(log_dir) / (f"{_PREFIX}{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                                     f"{next(self._uid)}{filename_suffix}")
        self._file = open(self.path, "wb")
        self._records = RecordWriter(self._file)  # tensorboard's record framing (length, CRCs)
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def get_logdir(self) -> str:
        return self._log_dir

    def add_event(self, event: Any) -> None:
        try:
            self._records.write(event.SerializeToString())
            self._file.flush()  # now, so that a failure is this call's
        except OSError as e:
            with contextlib.suppress(OSError):
                self._file.close()  # drop the unwritten bytes, or closing at exit fails again and prints it
            raise OSError(e.errno, f"{e.strerror or e} (writing a TensorBoard event)", str(self.path)) from None

    def flush(self) -> None:  # every event is flushed as it is added
        pass

    def close(self) -> None:
        self._file.close()


@functools.cache
def _writer_class() -> type:
    """SummaryWriter with an :class:`_EventFile` in place of its threaded EventFileWriter (tensorboard is
    imported here: only when used)."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.writer import FileWriter

    class _FileWriter(FileWriter):
        def __init__(self, log_dir: str, filename_suffix: str = "") -> None:  # not FileWriter's: it starts a thread
            self.event_writer = _EventFile(log_dir, filename_suffix)

    class _SummaryWriter(SummaryWriter):
        def _get_file_writer(self) -> _FileWriter:
            # SummaryWriter's own, but for the FileWriter it makes: torch offers no other way to choose it.
            if self.all_writers is None or self.file_writer is None:
                self.file_writer = _FileWriter(self.log_dir, self.filename_suffix)
                self.all_writers = {self.log_dir: self.file_writer}
                if self.purge_step is not None:  # readers drop the folder's events from this step on
                    self.file_writer.add_event(Event(step=self.purge_step, file_version="brain.Event:2"))
                    self.file_writer.add_event(Event(step=self.purge_step,
                                                     session_log=SessionLog(status=SessionLog.START)))
                    self.purge_step = None
            return self.file_writer

    return _SummaryWriter


def _summary_writer(log_dir: Path, purge_step: int | None = None, filename_suffix: str = "") -> Any:
    return _writer_class()(log_dir=str(log_dir), purge_step=purge_step, filename_suffix=filename_suffix)


def _purge_step(folder: Path, resumed_at: int | None) -> int | None:
    """The purge step of a new events file in ``folder``: ``resumed_at``, the first step a resumed run writes
    (after waiting for its file to sort after the old ones), or 0 in a folder without events yet.

    The 0 (a START marker that drops nothing) is for TensorBoard's dashboard reader, which takes a folder's
    first START for the session's start, not for a restart: a resume's marker purged nothing there, and the
    steps after an interrupted run's checkpoint showed twice. A folder with events but no resume (a log_dir
    shared by runs) gets none, as before.
    """
    if resumed_at is not None:
        _wait_for_a_later_second(folder)
        return resumed_at
    return None if _event_stamps(folder) else 0


def _logged_from(folder: Path, step: int | None) -> bool:
    """Whether ``folder``'s events, read as readers do (files in name order, a purge marker at step p
    dropping what came before it from p on), keep a summary at ``step`` or later (``step`` None: False)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    if step is None or not folder.is_dir():
        return False
    kept: list[int] = []
    for f in sorted(folder.glob(_PREFIX + "*")):
        for e in EventFileLoader(str(f)).Load():
            if e.HasField("session_log") and e.session_log.status == SessionLog.START:
                kept = [s for s in kept if s < e.step]
            elif e.HasField("summary"):
                kept.append(e.step)
    return any(s >= step for s in kept)


def _event_stamps(folder: Path) -> list[int]:
    """The seconds in the names of a folder's event files ("events.out.tfevents.<second>.<host>...")."""
    stamps = (p.name[len(_PREFIX):].split(".", 1)[0] for p in folder.glob(_PREFIX + "*"))
    return [int(s) for s in stamps if s.isdigit()]


def _wait_for_a_later_second(folder: Path, most: float = 2.0) -> None:
    """Sleep until the clock's second is past every event file's in ``folder`` (at most ``most`` seconds).

    A resumed run's event file must sort after the interrupted run's: readers take a folder's files in
    name order, and after the second the name holds the host and the pid, so a resume started in the
    same second by a process with a lower pid sorted first and its epochs were read before the old
    ones. A stamp further ahead than ``most`` (a clock set back) is not waited for.
    """
    latest = max(_event_stamps(folder), default=None)
    if latest is not None and 0 <= latest + 1 - time.time() <= most:
        time.sleep(latest + 1 - time.time())


def _sort_last(path: Path) -> Path:
    """Rename an event file so that its name sorts after every other one in its folder; returns the new path.

    Readers take a folder's event files in name order, and the name starts with the second the file
    was made, then a counter: a summary made in the same second as the epochs' file could sort
    before it ("...7.10.end" before "...7.9"), and a reader that drops events older than one seen
    already would drop the epochs. One second past the latest file's puts it last.
    """
    rest = path.name[len(_PREFIX):].split(".", 1)[1]
    return path.rename(path.with_name(f"{_PREFIX}{max(_event_stamps(path.parent)) + 1:010d}.{rest}"))


__all__ = ["TensorBoard"]
