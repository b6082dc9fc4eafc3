"""A fake trainer implementing TrainerHandle, and a driver that calls the hooks as the trainer does."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.callbacks import Callback, CallbackList


class FakeTrainer:
    """Records what callbacks ask for; its model is an nn.Linear whose weights the driver sets per epoch."""

    def __init__(self, run_dir: Path | None = None, lr: float = 0.1, model: nn.Module | None = None,
                 val: tuple[torch.Tensor, torch.Tensor] | None = None, is_main: bool = True,
                 planned_epochs: int = 1000) -> None:
        self._run_dir = run_dir
        self.planned_epochs = planned_epochs  # the run's last epoch (train.epochs, or where max_steps end it)
        self.is_main = is_main  # False: a rank other than 0 of a torchrun run
        self._lr = lr
        self.model = model if model is not None else nn.Linear(2, 1)
        self.val = val
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []  # the epochs' metrics, as the trainer keeps them
        self.stop_reasons: list[str] = []
        self.lrs_set: list[float] = []
        self.saved: list[Path] = []
        self.restored: list[int] = []  # the epochs restore_weights was called with
        self.stopped_by: str | None = None

    @property
    def run_dir(self) -> Path | None:
        return self._run_dir

    @property
    def lr(self) -> float:
        return self._lr

    def set_lr(self, lr: float) -> None:
        self._lr = lr
        self.lrs_set.append(lr)

    def request_stop(self, reason: str, by: str = "callback") -> None:
        if not self.stop_reasons:  # the trainer's rule: the first request wins
            self.stopped_by = by
        self.stop_reasons.append(reason)

    @property
    def stop_reason(self) -> str | None:
        return self.stop_reasons[0] if self.stop_reasons else None

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def restore_weights(self, epoch: int, state: dict[str, torch.Tensor]) -> None:
        self.set_weights(state)
        self.restored.append(epoch)

    def save_checkpoint(self, path: str | Path) -> Path:
        path = Path(path)
        if not self.is_main:  # as the trainer: rank 0 writes
            return path
        if not path.is_absolute():
            path = self._run_dir / path
        path.write_text(f"epoch {self.epoch}\n")  # a small file saying which epoch it holds
        self.saved.append(path)
        return path

    def validation_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.val

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        try:
            return self.model(images.float() / 255 if images.dtype == torch.uint8 else images.float())
        finally:
            self.model.train(was)


def epochs(**series: list[float]) -> list[dict[str, float]]:
    """Metrics rows from columns: ``epochs(val_loss=[...], train_loss=[...])``; unspecified columns are filled."""
    n = len(next(iter(series.values())))
    rows = []
    for i in range(n):
        row = {
            "train_loss": 1.0,
            "train_accuracy": 0.5,
            "val_loss": 1.0,
            "val_accuracy": 0.5,
            "lr": 0.1,
            "seconds": 1.0,
        }
        row.update({k: v[i] for k, v in series.items()})
        row["train_error"] = series["train_error"][i] if "train_error" in series else 1.0 - row["train_accuracy"]
        row["val_error"] = series["val_error"][i] if "val_error" in series else 1.0 - row["val_accuracy"]
        rows.append(row)
    return rows


def drive(callbacks: list[Callback], rows: list[dict[str, float]], trainer: FakeTrainer,
          state: dict[str, Any] | None = None) -> int | None:
    """Call the hooks in the trainer's order for each row (epochs trainer.epoch+1, ...).

    Before each epoch's on_epoch_end, every weight of the model is set to the
    epoch number, so restored weights tell which epoch they came from. With
    ``state`` (from CallbackList.state_dict) it resumes as the trainer does:
    on_train_begin, then load_state_dict. Returns the epoch a stop was
    requested at, or None.
    """
    cbs = CallbackList(callbacks)
    cbs.on_train_begin(trainer)
    if state is not None:
        cbs.load_state_dict(state)
    stopped = None
    last: dict[str, float] = {}
    for row in rows:
        epoch = trainer.epoch + 1
        cbs.on_epoch_begin(epoch, trainer)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.fill_(float(epoch))
        trainer.step += 1
        cbs.on_batch_begin(trainer.step - 1, trainer)
        cbs.on_batch_end(trainer.step, {"loss": row["train_loss"], "lr": trainer.lr}, trainer)
        cbs.on_validation_end(epoch, {k: row[k] for k in ("val_loss", "val_accuracy", "val_error")}, trainer)
        trainer.epoch = epoch
        last = {"epoch": epoch, **row}
        trainer.history.append(last)
        cbs.on_epoch_end(epoch, last, trainer)
        if trainer.stop_reasons:
            stopped = epoch
            break
    reason = trainer.stop_reasons[0] if trainer.stop_reasons else "max epochs reached"
    cbs.on_train_end({**last, "stop_reason": reason}, trainer)
    return stopped


def roundtrip(state: Any) -> Any:
    """Through torch.save and torch.load(weights_only=True), as checkpoints store callback states."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def weight_epoch(trainer: FakeTrainer) -> float:
    """The epoch the model's weights were set at (all weights hold the same number)."""
    values = {float(v) for p in trainer.model.parameters() for v in p.detach().flatten()}
    assert len(values) == 1, values
    return values.pop()
