"""TensorBoard logging through ``torch.utils.tensorboard`` (no TensorFlow needed).

What one run writes into ``<run>/tensorboard`` (so ``tensorboard --logdir runs``
shows every run, named ``<run>/tensorboard``):

* scalars per epoch: ``loss/train``, ``loss/val``, ``accuracy/train``,
  ``accuracy/val``, ``lr``;
* histograms per epoch: ``weights/<parameter>`` and ``gradients/<parameter>``
  (the gradient of the epoch's last batch);
* the model graph (traced once on two validation images);
* images: ``inputs/samples`` (the first 64 validation images, at step 0) and,
  per epoch, ``misclassified/val`` (up to 64 misclassified validation images)
  with their true and predicted labels as text ``misclassified/labels``;
* at the end: the hyperparameters with the final metrics (HParams dashboard,
  metric tags ``final/...``) and the stop reason as text ``stop_reason``, at
  the step after the last epoch.

Every other step is the epoch number. The end-of-run summary goes into an
event file of its own (suffix ``.end``) in the same folder, which a resumed run
deletes before it writes its own: a reader that ignores purge markers (the
HParams dashboard's) showed the old one beside the new. A run resumed after
epoch e (or inside its first epoch) also purges the events from step e + 1
on, those of an interrupted epoch. So nothing appears twice.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .base import Callback, TrainerHandle

log = logging.getLogger("mnistlab")

_END_SUFFIX = ".end"  # the event file of the end-of-run summary

_SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "lr": "lr",
}
_FINAL = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch")


def _hparam_value(v: Any) -> bool | int | float | str:
    """The HParams plugin takes numbers, strings and bools; lists and None are written as text."""
    if isinstance(v, (bool, int, float, str)):
        return v
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images.float()


class TensorBoard(Callback):
    """Write scalars, histograms, the graph, image grids and hyperparameters for TensorBoard.

    ``log_dir`` defaults to ``<run folder>/tensorboard`` (nothing is written
    when neither exists). ``hparams`` is a flat ``{name: value}`` dict (e.g.
    ``{"optimizer.lr": 0.01}``); :func:`~mnistlab.callbacks.build_callbacks`
    passes the whole resolved config.

    Gradients: the hook ``on_batch_end`` keeps *references* (no copy, no
    device sync) to the parameters' ``.grad`` tensors after each optimizer
    step, and drops them in ``on_batch_begin``, so at ``on_epoch_end`` it holds
    the gradients of the epoch's last batch whatever the trainer does with
    ``.grad`` afterwards (``zero_grad(set_to_none=True)`` replaces the tensors
    and leaves the referenced ones intact). Only an in-place zeroing between
    the last ``on_batch_end`` and ``on_epoch_end`` would hide them.

    >>> cb = TensorBoard(hparams={"model.name": "cnn", "optimizer.lr": 0.01})
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        histograms: bool = True,
        graph: bool = True,
        images: bool = True,
        hparams: dict[str, Any] | None = None,
        max_images: int = 64,
    ) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.histograms = histograms
        self.graph = graph
        self.images = images
        self.hparams = dict(hparams or {})
        self.max_images = max_images
        self.writer = None
        self._grads: dict[str, torch.Tensor] | None = None

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, trainer: TrainerHandle) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

        log_dir = self.log_dir or (Path(trainer.run_dir) / "tensorboard" if trainer.run_dir else None)
        if log_dir is None:
            log.warning("TensorBoard: the run has no folder and no log_dir was given; nothing is written")
            return
        # A resumed run (also one cut inside its first epoch, still at epoch 0) has the graph and samples
        # already; resumed after epoch e, it drops the events of epochs > e and the old end-of-run summary.
        resumed = trainer.step > 0
        if resumed:  # the finished run's summary: this run writes its own at the end
            for old in Path(log_dir).glob(f"events.out.tfevents.*{_END_SUFFIX}"):
                old.unlink(missing_ok=True)
        self._log_dir = Path(log_dir)
        if resumed:
            _wait_for_a_later_second(self._log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=trainer.epoch + 1 if resumed else None)
        if not resumed:
            if self.graph:
                self._add_graph(trainer)
            if self.images:
                images, _ = trainer.validation_data()
                self._add_grid("inputs/samples", images[: self.max_images], step=0)
        self.writer.flush()

    def on_batch_begin(self, step: int, trainer: TrainerHandle) -> None:
        self._grads = None  # let the previous batch's gradients go before this backward pass

    def on_batch_end(self, step: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        if self.writer is not None and self.histograms:
            self._grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        if self.writer is None:
            return
        for key, tag in _SCALARS.items():
            if key in metrics:
                self.writer.add_scalar(tag, float(metrics[key]), epoch)
        if self.histograms:
            for name, p in trainer.model.named_parameters():
                self._add_histogram(f"weights/{name}", p, epoch)
            for name, g in (self._grads or {}).items():
                self._add_histogram(f"gradients/{name}", g, epoch)
            self._grads = None
        if self.images:
            self._add_misclassified(trainer, epoch)
        self.writer.flush()

    def on_train_end(self, metrics: dict[str, Any], trainer: TrainerHandle) -> None:
        if self.writer is None:
            return
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer.close()
        # After the last epoch's step, into its own file, which a resumed run deletes: one summary per run,
        # whatever the reader (the HParams dashboard would show two sessions' start info).
        before = set(self._log_dir.glob(f"*{_END_SUFFIX}"))
        self.writer = SummaryWriter(log_dir=str(self._log_dir), filename_suffix=_END_SUFFIX)
        step = int(metrics.get("epoch", trainer.epoch)) + 1
        final = {
            f"final/{k}": float(metrics[k])
            for k in _FINAL
            if k in metrics and isinstance(metrics[k], (int, float)) and math.isfinite(float(metrics[k]))
        }
        # What SummaryWriter.add_hparams does, but into this writer's own folder: one run, one event stream.
        exp, ssi, sei = hparams({k: _hparam_value(v) for k, v in self.hparams.items()}, final)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        if metrics.get("stop_reason"):
            self.writer.add_text("stop_reason", str(metrics["stop_reason"]), step)
        self.writer.close()
        self.writer = None
        for path in set(self._log_dir.glob(f"*{_END_SUFFIX}")) - before:  # the one file just written
            _sort_last(path)

    # -- pieces -------------------------------------------------------------------

    def _add_graph(self, trainer: TrainerHandle) -> None:
        model = trainer.model
        images, _ = trainer.validation_data()
        try:
            device = next(model.parameters()).device
            sample = _as_float_images(images[:2].to(device))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation warnings are not the user's business
                self.writer.add_graph(model, sample)  # traces in eval mode; model.training is restored
        except Exception as e:  # a model that cannot be traced must not stop training
            log.warning("TensorBoard: could not trace the model graph (%s: %s); skipping it", type(e).__name__, e)

    def _add_histogram(self, tag: str, tensor: torch.Tensor, step: int) -> None:
        values = tensor.detach().float().cpu()
        if values.numel() == 0:
            return
        if not torch.isfinite(values).all():
            log.warning("TensorBoard: %s has non-finite values at epoch %d; histogram skipped", tag, step)
            return
        self.writer.add_histogram(tag, values, step)

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


_PREFIX = "events.out.tfevents."


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


def _sort_last(path: Path) -> None:
    """Rename an event file so that its name sorts after every other one in its folder.

    Readers take a folder's event files in name order, and the name starts with the second the file
    was made, then a counter: a summary made in the same second as the epochs' file could sort
    before it ("...7.10.end" before "...7.9"), and a reader that drops events older than one seen
    already would drop the epochs. One second past the latest file's puts it last.
    """
    rest = path.name[len(_PREFIX):].split(".", 1)[1]
    path.rename(path.with_name(f"{_PREFIX}{max(_event_stamps(path.parent)) + 1:010d}.{rest}"))


__all__ = ["TensorBoard"]
