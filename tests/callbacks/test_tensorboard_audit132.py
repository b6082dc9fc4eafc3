"""TensorBoard across interruptions and resumes: every epoch's scalars once, with metrics.csv's values."""

import csv
import os
import signal

import pytest
from tensorboard.backend.event_processing import event_accumulator

from mnistlab.callbacks import Callback, TensorBoard
from mnistlab.config import Config, apply_overrides


def accumulate(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={k: 0 for k in
                                                                          event_accumulator.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    return acc


def tiny_config(mnist_root, *extra):
    return apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100",
                                      "model.name=cnn", "model.width=0.25", "train.threads=1", "train.epochs=2",
                                      "train.batch_size=100", "tensorboard.graph=false", "tensorboard.images=false",
                                      "tensorboard.histograms=false", *extra])


class AddsF1(Callback):
    """A user's callback adding a number to the epoch's metrics (Keras' logs["f1"] = ...)."""

    def on_epoch_end(self, epoch, metrics, trainer):
        metrics["f1"] = 0.5 + epoch / 100


class SigintAfterEpoch(Callback):
    """Ctrl-C after the epoch's callbacks: the trainer saves last.ckpt, then stops ("interrupted after epoch")."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics, trainer):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


def test_numbers_a_callback_adds_survive_an_interruption_after_the_epoch(mnist_root, tmp_path):
    # The added numbers were written at the next epoch's start or the run's end; a run interrupted after an epoch
    # (Ctrl-C during its validation or saves) had neither, and the resume, purging from the next epoch on, kept
    # the epoch without its "f1", which metrics.csv has.
    from mnistlab.training import train

    run = tmp_path / "run"
    with pytest.raises(BaseException):
        train(tiny_config(mnist_root), out=run, quiet=True, report=False, callbacks=[AddsF1(), SigintAfterEpoch(1)])
    assert (run / "last.ckpt").is_file()
    train(tiny_config(mnist_root), resume=run, quiet=True, report=False, callbacks=[AddsF1()])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    acc = accumulate(run / "tensorboard")
    for key, tag in (("f1", "f1"), ("val_loss", "loss/val"), ("train_accuracy", "accuracy/train")):
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == \
            [(int(r["epoch"]), pytest.approx(float(r[key]), rel=1e-6)) for r in rows], tag


def test_a_resume_that_trains_nothing_purges_the_epochs_after_its_checkpoint(tmp_path):
    # Killed after epoch 2's on_epoch_end but before its last.ckpt, then resumed from epoch 1's with nothing left
    # to train (train.max_steps lowered): no epochs writer was made, so no purge marker, and epoch 2 stayed in
    # TensorBoard, which metrics.csv (the checkpoint's history) does not have, beside a summary at step 2.
    from test_tensorboard import fake_run  # (this folder is on sys.path, as for fake_trainer)

    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False)], last_epoch=2, interrupted=True)
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False)], first_epoch=2, last_epoch=1)  # nothing trained
    acc = accumulate(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("loss/train")] == [(1, 2.0)]
    assert [(e.step, e.value) for e in acc.Scalars("final/train_loss")] == [(2, 2.0)]
    assert [e.step for e in acc.Images("inputs/samples")] == [0]
    # and still no events file but the summary's (the marker goes into it)
    assert len([p for p in (tmp_path / "tensorboard").glob("events.*") if not p.name.endswith(".end")]) == 1


def test_a_resume_that_trains_nothing_purges_the_steps_after_its_checkpoint(tmp_path):
    # The same gap in steps/: the resume made no steps writer, so steps 3 and 4 (epoch 2's, after the checkpoint)
    # stayed beside a metrics.csv without epoch 2. Both readers, TensorBoard's dashboard one too.
    from test_tensorboard import _scalars, _ui_reader, fake_run

    def steps_files():
        return sorted((tmp_path / "tensorboard" / "steps").glob("events.*"))

    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False, log_every_n_steps=1)], last_epoch=2,
             interrupted=True)
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False, log_every_n_steps=1)], first_epoch=2,
             last_epoch=1)
    for reader in (accumulate(tmp_path / "tensorboard" / "steps"), _ui_reader(tmp_path / "tensorboard" / "steps")):
        assert [e.step for e in _scalars(reader, "loss/train_step")] == [1, 2]
    assert len(steps_files()) == 2  # the interrupted part's and the marker's
    # Resumed again with nothing to train, nothing after the checkpoint is left to drop: no file is added.
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False, log_every_n_steps=1)], first_epoch=2,
             last_epoch=1)
    assert len(steps_files()) == 2
