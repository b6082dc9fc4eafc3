"""TensorBoard and the terminal display: what the audit found, each read back from the files or the output."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch import nn

from fake_trainer import FakeTrainer
from mnistlab.callbacks import TensorBoard
from mnistlab.errors import ConfigError


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 10))


def val_data(n=24):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (n,), generator=g)


def metrics(epoch):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": 0.5, "val_loss": 2.0 / epoch,
            "val_accuracy": 0.5, "lr": 0.1, "seconds": 1.0}


def train_epochs(tb, trainer, first, last, batches=2, end=True):
    """Drive ``tb`` as the trainer does through epochs ``first`` to ``last`` (real backward passes)."""
    images, labels = trainer.val
    opt = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    for epoch in range(first, last + 1):
        tb.on_epoch_begin(epoch, trainer)
        for b in range(batches):
            tb.on_batch_begin(trainer.step, trainer)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(trainer.model(images[b * 8:(b + 1) * 8].float() / 255), labels[b * 8:(b + 1) * 8])
            loss.backward()
            opt.step()
            trainer.step += 1
            tb.on_batch_end(trainer.step, {"loss": loss.item(), "lr": 0.1}, trainer)
        trainer.epoch = epoch
        tb.on_epoch_end(epoch, metrics(epoch), trainer)
    if end:
        tb.on_train_end({**metrics(trainer.epoch), "stop_reason": "max epochs reached"}, trainer)


def accumulate(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={k: 0 for k in
                                                                          event_accumulator.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    return acc


def test_a_callback_reused_after_a_failed_run_writes_the_next_run_into_its_own_folder(tmp_path):
    # A notebook: train(cfg, out="a", callbacks=[tb]) ends in an error (or Ctrl-C: TrainingInterrupted), so
    # on_train_end never comes; train(cfg, out="b", callbacks=[tb]) then wrote b's per-step scalars into a's
    # still open steps writer: b had no tensorboard/steps, and a showed b's steps.
    tb = TensorBoard(graph=False, images=False, histograms=False, log_every_n_steps=1)
    a = FakeTrainer(run_dir=tmp_path / "a", model=tiny_model(), val=val_data())
    tb.on_train_begin(a)
    train_epochs(tb, a, 1, 1, end=False)  # the run fails here
    b = FakeTrainer(run_dir=tmp_path / "b", model=tiny_model(), val=val_data())
    tb.on_train_begin(b)
    train_epochs(tb, b, 1, 1)
    assert [e.step for e in accumulate(tmp_path / "b" / "tensorboard" / "steps").Scalars("loss/train_step")] == [1, 2]
    assert [e.step for e in accumulate(tmp_path / "a" / "tensorboard" / "steps").Scalars("loss/train_step")] == [1, 2]


def test_a_callback_reused_to_resume_its_interrupted_run_purges_what_came_after_the_checkpoint(tmp_path):
    # Interrupted after epoch 2 had been logged but before its checkpoint (last.ckpt says epoch 1), then resumed
    # with the same callback object: its stale writer had no purge marker, so epoch 2 showed twice.
    tb = TensorBoard(graph=False, images=False, histograms=False)
    first = FakeTrainer(run_dir=tmp_path, model=tiny_model(), val=val_data())
    tb.on_train_begin(first)
    train_epochs(tb, first, 1, 2, end=False)
    again = FakeTrainer(run_dir=tmp_path, model=tiny_model(), val=val_data())
    again.epoch, again.step = 1, 2  # as last.ckpt has it
    tb.on_train_begin(again)
    train_epochs(tb, again, 2, 2)
    assert [e.step for e in accumulate(tmp_path / "tensorboard").Scalars("loss/val")] == [1, 2]


@pytest.mark.parametrize("setting, value", [("max_images", -1), ("log_every_n_steps", -1),
                                            ("log_every_n_steps", 2.5), ("histogram_every_n_epochs", -1),
                                            ("histogram_every_n_epochs", "2"), ("max_images", True)])
def test_bad_counts_are_refused_by_the_python_api_as_by_the_config(setting, value):
    # The config refuses them ([tensorboard] log_every_n_steps = -1); TensorBoard(...) took them: max_images=-1
    # logged every validation image but one as "inputs/samples", log_every_n_steps=-1 every step, 2.5 the
    # steps 5, 10, ..., and histogram_every_n_epochs=-1 turned the histograms off without a word.
    with pytest.raises(ConfigError, match=f"TensorBoard: {setting} must be"):
        TensorBoard(**{setting: value})
    assert TensorBoard(max_images=8.0).max_images == 8  # a whole float is a count, as the other callbacks take it


def test_a_resume_into_a_folder_without_events_writes_the_graph_and_the_samples(tmp_path):
    # Trained with tensorboard.enabled=false, resumed with it on (the section may change on resume): the resumed
    # run took the folder for one that had its graph and samples already, and wrote neither, ever.
    trainer = FakeTrainer(run_dir=tmp_path, model=tiny_model(), val=val_data())
    trainer.epoch, trainer.step = 1, 2
    tb = TensorBoard(histograms=False, max_images=4)
    tb.on_train_begin(trainer)
    train_epochs(tb, trainer, 2, 2)
    acc = accumulate(tmp_path / "tensorboard")
    assert [e.step for e in acc.Images("inputs/samples")] == [0]
    assert acc.Tags()["graph"] is True
    assert [e.step for e in acc.Scalars("loss/val")] == [2]
    # and a second resume, into the folder that now has them, adds neither again
    trainer.step = 4
    tb.on_train_begin(trainer)
    train_epochs(tb, trainer, 3, 3)
    raw = [e for f in (tmp_path / "tensorboard").glob("events.*") for e in EventFileLoader(str(f)).Load()]
    assert sum(e.HasField("graph_def") for e in raw) == 1
    acc = accumulate(tmp_path / "tensorboard")
    assert [e.step for e in acc.Images("inputs/samples")] == [0]
    assert [e.step for e in acc.Scalars("loss/val")] == [2, 3]


def test_a_metric_a_callback_adds_to_the_epoch_is_logged_as_metrics_csv_has_it(mnist_root, tmp_path):
    # metrics.csv gets what a callback adds to the epoch's dict (Keras' logs["f1"] = ...), also from a callback
    # listed after TensorBoard (the run's own come first); TensorBoard logged only its fixed tags, where Keras'
    # logs every key of logs.
    import csv

    from mnistlab.callbacks import Callback
    from mnistlab.config import Config, apply_overrides
    from mnistlab.training import train

    class Doubled(Callback):
        def on_epoch_end(self, epoch, metrics, trainer):
            metrics["doubled_accuracy"] = 2 * metrics["val_accuracy"]
            metrics["np_loss"] = np.float32(metrics["val_loss"])  # NumPy numbers and one-value tensors, as the
            metrics["tensor_loss"] = torch.tensor(metrics["val_loss"])  # README allows them in the metrics
            metrics["note"] = "text is not a scalar"

    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=200", "data.val_size=100",
                                     "model.name=cnn", "model.width=0.25", "train.threads=1", "train.epochs=2",
                                     "train.batch_size=100", "tensorboard.graph=false", "tensorboard.images=false",
                                     "tensorboard.histograms=false"])
    train(cfg, out=tmp_path / "run", quiet=True, report=False, callbacks=[Doubled()])
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    acc = accumulate(tmp_path / "run" / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("doubled_accuracy")] == [
        (int(r["epoch"]), pytest.approx(float(r["doubled_accuracy"]))) for r in rows]
    for tag in ("np_loss", "tensor_loss"):
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [
            (int(r["epoch"]), pytest.approx(float(r["val_loss"]), rel=1e-6)) for r in rows]
    assert len(rows) == 2 and "note" not in acc.Tags()["scalars"]
    assert "val_error" not in acc.Tags()["scalars"]  # the run's own metrics keep their tags (accuracy/val)
