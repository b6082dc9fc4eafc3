"""Tests that kill the mutants of callbacks/tensorboard.py and callbacks/base.py that the other tests let live
(audit 154, hand-made mutation testing). Each test names the mistake it catches and holds the code to what its
docstrings promise, checked against a hand computation; event files are read back with tensorboard's
EventAccumulator, as TensorBoard reads them."""

import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing import event_accumulator
from torch import nn

from fake_trainer import FakeTrainer, drive, epochs
from mnistlab.callbacks import CallbackList, EarlyStopping, TensorBoard
from mnistlab.callbacks.base import resolve_mode
from mnistlab.config import TensorBoardConfig


def accumulate(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir),
                                             size_guidance={k: 0 for k in event_accumulator.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    return acc


# ---- base.py ----------------------------------------------------------------------------------------------------


def test_auto_mode_maximises_an_f_measure_as_keras_does():
    # resolve_mode's docstring (and Keras): max for an accuracy "or an F-measure" (a monitor starting with
    # "fmeasure"). Mutant killed: only "acc" in the name counted, so an F-measure a callback adds was minimised
    # and early stopping counted every rise of it as an epoch without improvement.
    assert resolve_mode("fmeasure_macro", "auto") == "max"
    trainer = FakeTrainer()
    rows = [{**row, "fmeasure": f} for row, f in zip(epochs(val_loss=[1.0] * 3), [0.5, 0.6, 0.7])]
    assert drive([EarlyStopping(monitor="fmeasure", patience=1)], rows, trainer) is None  # rising: never stops
    assert trainer.stop_reasons == []


def test_a_state_saved_in_the_other_mode_is_not_loaded():
    # _same_monitor: a state saved while watching another metric *or mode* starts afresh. val_loss in min mode
    # ends epoch 2 with best 1.0 and wait 1. Resumed in max mode, 0.9 is the first value (best, wait 0): no stop.
    # Mutant killed: the mode not compared, so min mode's best 1.0 was loaded and 0.9 counted as a second epoch
    # without improvement, stopping at epoch 3 with patience 2.
    trainer = FakeTrainer()
    first = EarlyStopping(monitor="val_loss", mode="min", patience=2)
    assert drive([first], epochs(val_loss=[1.0, 2.0]), trainer) is None
    state = CallbackList([first]).state_dict()
    assert drive([EarlyStopping(monitor="val_loss", mode="max", patience=2)], epochs(val_loss=[0.9]), trainer,
                 state=state) is None
    # The same mode loads it: 0.9 beats 1.0 in min mode, no stop either, but from the stored best.
    again = FakeTrainer()
    drive([first], epochs(val_loss=[1.0, 2.0]), again)
    resumed = EarlyStopping(monitor="val_loss", mode="min", patience=2)
    drive([resumed], epochs(val_loss=[1.5]), again, state=CallbackList([first]).state_dict())
    assert again.stop_reasons and again.stop_reasons[0].startswith("early stopping")  # wait 2: 1.5 not below 1.0


# ---- tensorboard.py ---------------------------------------------------------------------------------------------


class PixelClass(nn.Module):
    """Predicts for each image the class its first pixel holds (0..9, as a uint8 value): errors are placed by
    the labels."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return F.one_hot((x[:, 0, 0, 0] * 255).round().long() % 10, 10).float() * self.w


def pixel_data(n, wrong):
    """``n`` 4x4 images whose first pixel is i % 10, labelled so, except at the indices ``wrong`` (label + 1)."""
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 10
    labels = torch.arange(n) % 10
    labels[wrong] = (labels[wrong] + 1) % 10
    return images, labels


def one_epoch(tb, trainer, epoch_metrics):
    """Drive ``tb`` through one epoch of one batch and the run's end, as the trainer calls the hooks."""
    tb.on_train_begin(trainer)
    tb.on_epoch_begin(1, trainer)
    tb.on_batch_begin(0, trainer)
    trainer.model(trainer.val[0][:2].float() / 255).sum().backward()
    trainer.step = 1
    tb.on_batch_end(1, {"loss": 1.0, "lr": 0.1}, trainer)
    trainer.epoch = 1
    tb.on_epoch_end(1, epoch_metrics, trainer)
    tb.on_train_end({**epoch_metrics, "stop_reason": "max epochs reached (1)"}, trainer)


METRICS = {"epoch": 1, "train_loss": 1.5, "train_accuracy": 0.5, "train_error": 0.5, "val_loss": 2.0,
           "val_accuracy": 0.25, "val_error": 0.75, "lr": 0.1, "seconds": 1.0}


def text(acc, tag):
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]


def test_misclassified_images_stop_at_max_images_across_validation_chunks(tmp_path):
    # The validation split is predicted 2,000 images at a time. 3 errors in the first chunk and 10 in the second,
    # max_images 8: the 3 and the first 5 of the second chunk, in order. Mutant killed: each chunk taking up to
    # max_images errors of its own (13 images and labels, not "up to 64" as the module docstring says).
    wrong = [5, 100, 1500, *range(2000, 2010)]
    images, labels = pixel_data(2100, wrong)
    trainer = FakeTrainer(run_dir=tmp_path, model=PixelClass(), val=(images, labels))
    one_epoch(TensorBoard(graph=False, histograms=False, max_images=8), trainer, METRICS)
    acc = accumulate(tmp_path / "tensorboard")
    shown = wrong[:8]
    pairs = ", ".join(f"{int(labels[i])}→{int(images[i, 0, 0, 0])}" for i in shown)
    assert text(acc, "misclassified/labels/text_summary") == [f"true→predicted, row by row: {pairs}"]
    [grid] = acc.Images("misclassified/val")
    # make_grid: 8 per row, 2 pixels of padding around each 4x4 image: one row of 8.
    assert (grid.step, grid.width, grid.height) == (1, 8 * 6 + 2, 6 + 2)


def test_the_input_samples_are_at_step_0_and_at_most_max_images(tmp_path):
    # The module docstring: "inputs/samples (the first 64 validation images, at step 0)". 10 of 30: two rows of 8
    # columns. Mutant killed: the samples at step 1, where the first epoch's misclassified images are.
    images, labels = pixel_data(30, [])
    trainer = FakeTrainer(run_dir=tmp_path, model=PixelClass(), val=(images, labels))
    one_epoch(TensorBoard(graph=False, histograms=False, max_images=10), trainer, METRICS)
    [grid] = accumulate(tmp_path / "tensorboard").Images("inputs/samples")
    assert (grid.step, grid.width, grid.height) == (0, 8 * 6 + 2, 2 * 6 + 2)


def test_non_finite_final_metrics_are_left_out_of_the_hparams(tmp_path):
    # _final: "the keys whose values are finite numbers". A run whose validation loss is NaN at its last epoch
    # gets final/train_loss but no final/val_loss. Mutant killed: the finiteness check dropped (a NaN metric in
    # the HParams table).
    images, labels = pixel_data(20, [])
    trainer = FakeTrainer(run_dir=tmp_path, model=PixelClass(), val=(images, labels))
    one_epoch(TensorBoard(graph=False, histograms=False, images=False), trainer,
              {**METRICS, "val_loss": float("nan"), "train_accuracy": float("inf")})
    tags = accumulate(tmp_path / "tensorboard").Tags()["scalars"]
    assert {"final/train_loss", "final/val_accuracy", "final/epoch"} <= set(tags)
    assert not {"final/val_loss", "final/train_accuracy"} & set(tags)


class WithEmptyParameter(PixelClass):
    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(0))  # an empty parameter (a layer of width 0)


def test_an_empty_parameter_gets_no_histogram_and_does_not_end_the_run(tmp_path):
    # _add_histogram skips a tensor with no values. Mutant killed: it went on to the bins' max(), a RuntimeError
    # on no values, which ended the run at its first epoch.
    images, labels = pixel_data(20, [])
    trainer = FakeTrainer(run_dir=tmp_path, model=WithEmptyParameter(), val=(images, labels))
    one_epoch(TensorBoard(graph=False, images=False), trainer, METRICS)
    histograms = accumulate(tmp_path / "tensorboard").Tags()["histograms"]
    assert sorted(histograms) == ["gradients/w", "weights/w"]


def test_from_config_passes_each_switch_to_its_own_setting():
    # Mutant killed: [tensorboard] images taken from histograms (images on with histograms off, or the reverse).
    for histograms, graph, images in ((True, False, False), (False, True, True), (False, False, True)):
        tb = TensorBoard.from_config(TensorBoardConfig(histograms=histograms, graph=graph, images=images))
        assert (tb.histograms, tb.graph, tb.images) == (histograms, graph, images)


def test_a_one_value_tensor_a_callback_adds_is_logged_under_its_name(tmp_path):
    # _log_added takes a one-value tensor as metrics.csv does (logs["f1"] = torch.tensor(0.75)). Mutant killed:
    # the tensor not converted, so it was no Real number and left out of TensorBoard without a word.
    images, labels = pixel_data(20, [])
    trainer = FakeTrainer(run_dir=tmp_path, model=PixelClass(), val=(images, labels))
    one_epoch(TensorBoard(graph=False, histograms=False, images=False), trainer,
              {**METRICS, "f1": torch.tensor(0.75), "many": torch.tensor([1.0, 2.0])})
    acc = accumulate(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("f1")] == [(1, 0.75)]
    assert "many" not in acc.Tags()["scalars"]  # not one number: not a scalar
