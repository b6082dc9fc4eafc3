"""What a run keeps while it trains: metrics.csv (History) and the TensorBoard events, as a Keras user uses them."""

import csv

import pytest

from fake_trainer import FakeTrainer, drive, epochs, roundtrip
from mnistlab.callbacks import Callback, CallbackList, History, TensorBoard
from mnistlab.errors import RunDirError

ROWS = epochs(val_loss=[0.9, 0.8, 0.7], val_accuracy=[0.1, 0.2, 0.3])


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class AddsF1(Callback):
    """Keras' ``logs["f1"] = f1_score(...)``: a metric of the user's, added in on_epoch_end."""

    def on_epoch_end(self, epoch, metrics, trainer):
        metrics["f1"] = epoch / 10


def test_a_metric_a_later_callback_adds_in_on_epoch_end_reaches_metrics_csv_and_the_checkpointed_rows(tmp_path):
    # The run's History comes before the user's callbacks: it copied the epoch's metrics before f1 was added, so
    # metrics.csv never had the f1 that last.ckpt's history holds.
    h = History()
    drive([h, AddsF1()], ROWS[:2], FakeTrainer(run_dir=tmp_path))
    table = read(tmp_path / "metrics.csv")
    assert [r["f1"] for r in table] == ["0.1", "0.2"]
    assert [r["f1"] for r in h.rows] == [0.1, 0.2]

    h = History()
    cbs = CallbackList([h, AddsF1()])
    cbs.on_train_begin(FakeTrainer(run_dir=tmp_path))
    cbs.on_epoch_end(1, {"epoch": 1, **ROWS[0]}, FakeTrainer(run_dir=tmp_path))
    state = roundtrip(h.state_dict())  # what last.ckpt holds: written after every callback's on_epoch_end
    assert state["rows"][0]["f1"] == 0.1


def test_a_run_summary_that_cannot_be_written_names_the_file_and_says_how_to_write_it_again(tmp_path):
    # After the final test the .end file is written again with summary.json's numbers; the folder replaced by a
    # file (or made read-only) in between gave "cannot write ... : Not a directory" and no way forward.
    run = tmp_path / "my run"
    run.mkdir()
    tb = TensorBoard(graph=False, histograms=False, images=False)
    drive([tb], ROWS[:1], FakeTrainer(run_dir=run))
    (run / "tensorboard").rename(run / "moved")
    (run / "tensorboard").write_text("not a folder")
    with pytest.raises(RunDirError) as raised:
        tb.add_run_summary({"test_accuracy": 0.5, "best_epoch": 1})
    message = str(raised.value)
    assert "\n" not in message
    assert f"{run}/tensorboard/events.out.tfevents." in message and "Not a directory" in message
    assert f"mnistlab train --resume '{run}'" in message


def test_a_histogram_of_finite_weights_beyond_1e20_is_written(tmp_path):
    # A diverging run's weights, huge but finite, fell beyond TensorBoard's default buckets (which end at 1e20):
    # add_histogram raised "The histogram is empty" and the run ended with a traceback and no last.ckpt.
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoard(log_dir=tmp_path, graph=False, images=False)
    tb.on_train_begin(FakeTrainer(run_dir=tmp_path))
    tb._add_histogram("weights/huge", torch.tensor([1e21, -3e25, 2e30]), 1)
    tb._add_histogram("weights/usual", torch.tensor([0.1, -0.2]), 1)
    tb.writer.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0}).Reload()
    huge = events.Histograms("weights/huge")[0].histogram_value
    assert (huge.num, huge.min, huge.max) == (3, pytest.approx(-3e25), pytest.approx(2e30))
    assert events.Histograms("weights/usual")[0].histogram_value.num == 2
