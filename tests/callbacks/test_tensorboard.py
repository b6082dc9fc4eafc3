"""TensorBoard: a short real run (tiny conv net, real backward passes), read back with tensorboard's own readers."""

import errno
import threading
from pathlib import Path
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from fake_trainer import FakeTrainer
from mnistlab.callbacks import Callback, CallbackList, TensorBoard
from mnistlab.config import Config, ConfigError, TensorBoardConfig, apply_overrides
from mnistlab.errors import RunDirError

EPOCHS, BATCHES = 2, 2


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)
    )


def epoch_metrics(epoch):
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "train_accuracy": 0.1 * epoch, "train_error": 1 - 0.1 * epoch,
            "val_loss": 2.5 / epoch, "val_accuracy": 0.1, "val_error": 0.9, "lr": 0.1, "seconds": 1.0}


def fake_run(tmp_path, callbacks, first_epoch=1, last_epoch=EPOCHS, steps_done=None, interrupted=False,
             is_main=True):
    """Call the hooks as the trainer does, with real forward/backward/step on random uint8 images.

    A resumed run waits for a later second than the run before it by itself (readers order a folder's
    event files by name, which begins with the second the file was made).

    ``first_epoch`` > 1 resumes after epoch first_epoch - 1; ``steps_done`` (default: those epochs' steps) > 0
    with ``first_epoch`` 1 resumes inside the first epoch. ``interrupted``: no on_train_end, as after a signal.
    ``is_main`` False: a rank other than 0 of a torchrun run, which has no run folder."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 12, 12), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (40,), generator=g)
    model = tiny_model()
    trainer = FakeTrainer(run_dir=tmp_path if is_main else None, model=model, val=(images, labels), is_main=is_main)
    trainer.epoch = first_epoch - 1
    trainer.step = (first_epoch - 1) * BATCHES if steps_done is None else steps_done
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cbs = CallbackList(callbacks)
    cbs.on_train_begin(trainer)
    last_grads = {}
    for epoch in range(first_epoch, last_epoch + 1):
        cbs.on_epoch_begin(epoch, trainer)
        model.train()
        for b in range(BATCHES):
            cbs.on_batch_begin(trainer.step, trainer)
            x, y = images[b * 8 : (b + 1) * 8].float() / 255, labels[b * 8 : (b + 1) * 8]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            trainer.step += 1
            cbs.on_batch_end(trainer.step, {"loss": loss.item(), "lr": 0.1}, trainer)
        last_grads[epoch] = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.zero_grad(set_to_none=True)  # a trainer may drop the gradients before on_epoch_end
        trainer.epoch = epoch
        metrics = epoch_metrics(epoch)
        cbs.on_validation_end(epoch, {k: metrics[k] for k in ("val_loss", "val_accuracy", "val_error")}, trainer)
        cbs.on_epoch_end(epoch, metrics, trainer)
    if not interrupted:
        last = epoch_metrics(trainer.epoch)  # as the trainer's history ends, also when nothing was left to train
        cbs.on_train_end({**last, "stop_reason": f"max epochs reached ({trainer.epoch})"}, trainer)
    return model, last_grads


def accumulate(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={k: 0 for k in event_accumulator.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    return acc


def test_event_files_hold_scalars_histograms_images_graph_and_hparams(tmp_path):
    model, grads = fake_run(tmp_path, [TensorBoard(hparams={"optimizer.lr": 0.1, "model.channels": [4], "model.dropout": None})])
    log_dir = tmp_path / "tensorboard"
    acc = accumulate(log_dir)
    tags = acc.Tags()

    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    assert [e.value for e in acc.Scalars("loss/val")] == [2.5, 1.25]
    assert {"final/val_accuracy", "final/val_loss", "final/train_loss", "final/train_accuracy"} <= set(tags["scalars"])

    names = [n for n, _ in model.named_parameters()]
    assert set(tags["histograms"]) == {f"weights/{n}" for n in names} | {f"gradients/{n}" for n in names}
    for name in names:
        events = acc.Histograms(f"gradients/{name}")
        assert [e.step for e in events] == [1, 2]
        # The histogram is of the epoch's last batch's gradient, though .grad was set to None after it.
        for e in events:
            g = grads[e.step][name]
            assert abs(e.histogram_value.sum - float(g.sum())) < 1e-4 * max(1.0, float(g.abs().sum()))
            assert e.histogram_value.num == g.numel()

    assert set(tags["images"]) == {"inputs/samples", "misclassified/val"}
    samples = acc.Images("inputs/samples")
    assert [e.step for e in samples] == [0] and samples[0].width > 12 and samples[0].encoded_image_string[:4] == b"\x89PNG"
    assert [e.step for e in acc.Images("misclassified/val")] == [1, 2]  # an untrained net misclassifies random labels

    assert tags["graph"] is True
    assert any(node.op for node in acc.Graph().node)

    hp = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(hp)
    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.1
    assert start.hparams["model.channels"].string_value == "[4]"
    assert start.hparams["model.dropout"].string_value == "none"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert "final/val_accuracy" in {m.name.tag for m in experiment.metric_infos}

    # In the run's own folder (the hparams do not land in a sub-folder): the epochs' file, then the summary's,
    # named to be read last; the per-step scalars would have the sub-folder steps/ to themselves, made at the
    # first step logged (this run's few steps are under log_every_n_steps' 50).
    files = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert [p.parent for p in files] == [log_dir, log_dir]
    assert files[1].name.endswith(".end")
    raw = [e for f in log_dir.glob("events.*") for e in EventFileLoader(str(f)).Load()]
    assert any(e.HasField("graph_def") for e in raw)
    assert any(v.tag.startswith("stop_reason") for e in raw for v in e.summary.value)  # text: "stop_reason/text_summary"


def test_resume_purges_the_epochs_after_the_checkpoint(tmp_path):
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False)])  # epochs 1 and 2 written
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False)], first_epoch=2)  # resumed after epoch 1
    acc = accumulate(tmp_path / "tensorboard")
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 2]
    assert [e.step for e in acc.Images("inputs/samples")] == [0]
    assert [e.step for e in acc.Scalars("final/val_loss")] == [3]


def test_a_resume_in_the_same_second_names_its_file_to_be_read_after_the_old_ones(tmp_path):
    # The interrupted run's file, made this second by another process whose name sorts after this one's.
    log_dir = tmp_path / "tensorboard"
    log_dir.mkdir()
    old = log_dir / f"events.out.tfevents.{int(time.time()):010d}.zzzz.99999.0"
    old.write_bytes(b"")
    trainer = FakeTrainer(run_dir=tmp_path, model=tiny_model())
    trainer.epoch, trainer.step = 1, BATCHES
    tb = TensorBoard(graph=False, histograms=False, images=False)
    tb.on_train_begin(trainer)
    tb.on_epoch_end(2, epoch_metrics(2), trainer)  # a resumed run's writer is made at its first event
    tb.writer.close()
    assert sorted(p.name for p in log_dir.iterdir())[0] == old.name


def test_resume_inside_the_first_epoch_writes_the_graph_and_samples_once(tmp_path):
    fake_run(tmp_path, [TensorBoard(histograms=False)], last_epoch=0, interrupted=True)  # cut inside epoch 1
    fake_run(tmp_path, [TensorBoard(histograms=False)], steps_done=1)
    raw = [e for f in (tmp_path / "tensorboard").glob("events.*") for e in EventFileLoader(str(f)).Load()]
    assert sum(e.HasField("graph_def") for e in raw) == 1
    assert [e.step for e in accumulate(tmp_path / "tensorboard").Images("inputs/samples")] == [0]


def test_resuming_a_finished_run_replaces_its_end_of_run_summary(tmp_path):
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False)])  # finished after epoch 2
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False)], first_epoch=3, last_epoch=2)  # nothing to train
    acc = accumulate(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("final/val_loss")] == [(3, 1.25)]
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False)], first_epoch=3, last_epoch=3)  # one more epoch
    acc = accumulate(tmp_path / "tensorboard")
    assert [e.step for e in acc.Scalars("final/val_loss")] == [4]
    assert [e.step for e in acc.Scalars("loss/val")] == [1, 2, 3]
    starts = [e for f in (tmp_path / "tensorboard").glob("events.*") for e in EventFileLoader(str(f)).Load()
              if any(v.tag == "_hparams_/session_start_info" for v in e.summary.value)]
    assert [e.step for e in starts] == [4]  # the finished run's summary file is gone, not only purged
    # The reader of TensorBoard's own dashboards ignores purge markers: it showed steps 3 and 4 here.
    from tensorboard.backend.event_processing import plugin_event_accumulator

    ui = plugin_event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    ui.Reload()
    assert [e.step for e in ui.Tensors("final/val_loss")] == [4]
    assert [e.step for e in ui.Tensors("stop_reason/text_summary")] == [4]


def test_resuming_a_finished_run_adds_no_events_file_but_its_summary(tmp_path):
    # A resume with nothing to train (its epochs done, or only the test left after an interruption) added two
    # events files holding nothing but a purge marker: one beside the epochs' file, one beside the steps'.
    def events(kind):
        return sorted(p.name for p in (tmp_path / "tensorboard").rglob("events.*") if p.name.endswith(".end") == kind)

    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False, log_every_n_steps=1)])
    kept, (end,) = events(False), events(True)
    fake_run(tmp_path, [TensorBoard(graph=False, histograms=False, log_every_n_steps=1)], first_epoch=3, last_epoch=2)
    assert events(False) == kept and len(kept) == 2
    assert len(events(True)) == 1 and events(True) != [end]  # the summary is written again


def test_switches_turn_parts_off(tmp_path):
    fake_run(tmp_path, [TensorBoard(histograms=False, graph=False, images=False)])
    tags = accumulate(tmp_path / "tensorboard").Tags()
    assert tags["histograms"] == [] and tags["images"] == [] and tags["graph"] is False
    assert "loss/train" in tags["scalars"]


def test_a_rank_other_than_0_logs_nothing(tmp_path, caplog):
    # Under torchrun every rank runs a user's TensorBoard(log_dir=...): each wrote every point into the folder,
    # so the dashboard showed each curve once per process.
    tb = TensorBoard(log_dir=tmp_path / "logs")
    fake_run(tmp_path, [tb], is_main=False)
    tb.add_run_summary({"test_accuracy": 0.5})
    assert list(tmp_path.iterdir()) == [] and caplog.records == []  # not even "the run has no folder"


def test_untraceable_model_is_logged_not_fatal(tmp_path, caplog):
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(144, 10)

        def forward(self, x):
            raise RuntimeError("cannot trace me")

    val = (torch.zeros(2, 1, 12, 12, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    trainer = FakeTrainer(run_dir=tmp_path, model=Untraceable(), val=val)
    tb = TensorBoard(histograms=False, images=False)
    tb.on_train_begin(trainer)
    tb.on_train_end({"epoch": 0, "stop_reason": "none"}, trainer)
    assert "could not trace the model graph (RuntimeError: cannot trace me)" in caplog.text
    assert trainer.model.training  # add_graph traces in eval mode and puts the mode back


def test_loss_and_lr_every_n_steps_against_the_global_step(tmp_path):
    fake_run(tmp_path, [TensorBoard(graph=False, images=False, log_every_n_steps=2)])  # steps 1 to 4
    steps = accumulate(tmp_path / "tensorboard" / "steps")
    assert [(e.step, e.value) for e in steps.Scalars("lr/step")] == [(2, pytest.approx(0.1)), (4, pytest.approx(0.1))]
    assert [e.step for e in steps.Scalars("loss/train_step")] == [2, 4]
    assert all(0 < e.value < 10 for e in steps.Scalars("loss/train_step"))
    # The epochs' run keeps its own tags and x axis.
    assert not {"lr/step", "loss/train_step"} & set(accumulate(tmp_path / "tensorboard").Tags()["scalars"])
    fake_run(tmp_path / "off", [TensorBoard(graph=False, images=False, log_every_n_steps=0)])
    assert not (tmp_path / "off" / "tensorboard" / "steps").exists()


# Resumed inside epoch 1 at step 1, the driver trains two whole epochs more: steps 2 to 5.
@pytest.mark.parametrize("first_epoch, steps_done, logged", [(2, None, [1, 2, 3, 4]), (1, 1, [1, 2, 3, 4, 5])],
                         ids=["after-epoch-1", "inside-epoch-1"])
def test_resume_neither_duplicates_nor_skips_steps(tmp_path, first_epoch, steps_done, logged):
    # The first run logged steps 1 and 2 (and epoch 1), then stopped without on_train_end, as after a kill.
    fake_run(tmp_path, [TensorBoard(graph=False, log_every_n_steps=1)], last_epoch=1, interrupted=True)
    fake_run(tmp_path, [TensorBoard(graph=False, log_every_n_steps=1)], first_epoch=first_epoch, steps_done=steps_done)
    for reader in (accumulate(tmp_path / "tensorboard" / "steps"), _ui_reader(tmp_path / "tensorboard" / "steps")):
        for tag in ("loss/train_step", "lr/step"):
            assert [e.step for e in _scalars(reader, tag)] == logged, tag
    # The epochs' purge (from epoch 2, or 1) does not drop the steps, as it would in one folder.
    for reader in (accumulate(tmp_path / "tensorboard"), _ui_reader(tmp_path / "tensorboard")):
        assert [e.step for e in _scalars(reader, "loss/train")] == [1, 2]


def _ui_reader(log_dir):
    from tensorboard.backend.event_processing import plugin_event_accumulator

    ui = plugin_event_accumulator.EventAccumulator(str(log_dir))
    ui.Reload()
    return ui


def _scalars(reader, tag):
    return reader.Scalars(tag) if hasattr(reader, "Scalars") else reader.Tensors(tag)


def test_ema_metrics_are_logged_when_present(tmp_path):
    trainer = FakeTrainer(run_dir=tmp_path, model=tiny_model())
    tb = TensorBoard(graph=False, images=False, histograms=False)
    tb.on_train_begin(trainer)
    metrics = {**epoch_metrics(1), "ema_val_loss": 0.75, "ema_val_accuracy": 0.875}
    trainer.epoch = 1
    tb.on_epoch_end(1, metrics, trainer)
    tb.on_train_end({**metrics, "stop_reason": "max epochs reached (1)"}, trainer)
    acc = accumulate(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("loss/ema_val")] == [(1, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("accuracy/ema_val")] == [(1, 0.875)]
    assert [e.value for e in acc.Scalars("final/ema_val_accuracy")] == [0.875]


def test_run_summary_adds_the_tested_models_numbers_to_the_hparams(tmp_path):
    tb = TensorBoard(graph=False, histograms=False, images=False, hparams={"optimizer.lr": 0.1})
    fake_run(tmp_path, [tb])  # 2 epochs; summary.json says best.ckpt was epoch 1
    tb.add_run_summary({"test_accuracy": 0.25, "test_loss": 2.0, "best_epoch": 1, "best_val_accuracy": 0.1,
                        "ema_test_accuracy": None, "evaluated": "best.ckpt"})  # null and text values are left out
    log_dir = tmp_path / "tensorboard"
    acc = accumulate(log_dir)
    for tag, value in (("final/test_accuracy", 0.25), ("final/test_loss", 2.0), ("final/best_epoch", 1.0),
                       ("final/val_loss", 1.25), ("final/epoch", 2.0)):
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(3, value)], tag
    assert "final/ema_test_accuracy" not in acc.Tags()["scalars"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert {"final/test_accuracy", "final/best_epoch"} <= {m.name.tag for m in experiment.metric_infos}
    # The .end file was replaced, not added to: one session for readers that ignore purge markers.
    assert len(list(log_dir.glob("*.end"))) == 1
    ui = _ui_reader(log_dir)
    assert [e.step for e in ui.Tensors("final/val_loss")] == [3]
    assert len(ui.Tensors("_hparams_/session_start_info")) == 1
    assert sorted(p.name for p in log_dir.glob("events.*"))[-1].endswith(".end")  # still read last


def test_histograms_every_n_epochs(tmp_path):
    model, grads = fake_run(tmp_path, [TensorBoard(graph=False, images=False, histogram_every_n_epochs=2)])
    acc = accumulate(tmp_path / "tensorboard")
    for name, _ in model.named_parameters():
        assert [e.step for e in acc.Histograms(f"weights/{name}")] == [2]
        [event] = acc.Histograms(f"gradients/{name}")
        assert event.step == 2 and abs(event.histogram_value.sum - float(grads[2][name].sum())) < 1e-4
    fake_run(tmp_path / "off", [TensorBoard(graph=False, images=False, histogram_every_n_epochs=0)])
    assert accumulate(tmp_path / "off" / "tensorboard").Tags()["histograms"] == []


def test_config_keys_are_validated_and_reach_the_callback():
    cfg = apply_overrides(Config(), ["tensorboard.log_every_n_steps=10", "tensorboard.histogram_every_n_epochs=5"])
    tb = TensorBoard.from_config(cfg.tensorboard, hparams={"x": 1})
    assert (tb.log_every_n_steps, tb.histogram_every_n_epochs, tb.hparams) == (10, 5, {"x": 1})
    assert (TensorBoardConfig().log_every_n_steps, TensorBoardConfig().histogram_every_n_epochs) == (50, 1)
    for bad in ("tensorboard.log_every_n_steps=-1", "tensorboard.histogram_every_n_epochs=-2",
                "tensorboard.log_every_n_steps=2.5", "tensorboard.histogram_every_n_epochs=true"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            apply_overrides(Config(), [bad])


def _fill_the_disk(monkeypatch):
    """From the call of the returned function on, every TensorBoard record write fails with ENOSPC."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    full = []
    write = RecordWriter.write

    def write_or_fail(self, data):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, data)

    monkeypatch.setattr(RecordWriter, "write", write_or_fail)
    return lambda: full.append(True)


# pytest catches what a thread raises (so stderr shows nothing) and warns: an error here.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_is_an_error_naming_the_events_file_without_a_thread_traceback(tmp_path, monkeypatch, capfd):
    fill = _fill_the_disk(monkeypatch)
    trainer = FakeTrainer(run_dir=tmp_path, model=tiny_model())
    tb = TensorBoard(graph=False, images=False, histograms=False)
    tb.on_train_begin(trainer)
    assert not [t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread"]  # writes here
    fill()
    trainer.epoch = 1
    with pytest.raises(OSError) as raised:
        tb.on_epoch_end(1, epoch_metrics(1), trainer)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename is not None
    path = Path(raised.value.filename)
    assert path.parent == tmp_path / "tensorboard" and path.name.startswith("events.out.tfevents.")
    time.sleep(0.2)  # a writer thread would have printed by now
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_in_a_real_run_is_a_run_dir_error(mnist_root, tmp_path, monkeypatch, capfd):
    from mnistlab.training import train

    fill = _fill_the_disk(monkeypatch)

    class DiskFillsUp(Callback):
        def on_epoch_begin(self, epoch, trainer):
            fill()

    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100",
                                     "model.name=cnn", "model.width=0.25", "train.threads=1", "train.epochs=1",
                                     "tensorboard.graph=false"])
    with pytest.raises(RunDirError, match=r"No space left on device.*tensorboard/events\.out\.tfevents\."):
        train(cfg, out=tmp_path / "run", quiet=True, callbacks=[DiskFillsUp()])
    assert "Traceback" not in capfd.readouterr().err


def test_a_real_run_logs_steps_and_gives_the_hparams_its_test_accuracy(mnist_root, tmp_path):
    # The config's keys reach the run's callback, and the run hands it summary.json's numbers after its test:
    # the dashboard compared runs by the last epoch's validation numbers only.
    import json

    from mnistlab.training import train

    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100",
                                     "model.name=cnn", "model.width=0.25", "train.threads=1", "train.epochs=1",
                                     "train.batch_size=100", "tensorboard.log_every_n_steps=1",
                                     "tensorboard.graph=false", "tensorboard.images=false"])
    train(cfg, out=tmp_path / "run", quiet=True, report=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    steps = accumulate(tmp_path / "run" / "tensorboard" / "steps")
    assert [e.step for e in steps.Scalars("loss/train_step")] == [1, 2, 3]  # 300 images, batches of 100
    acc = accumulate(tmp_path / "run" / "tensorboard")
    assert [e.value for e in acc.Scalars("final/test_accuracy")] == [pytest.approx(summary["test_accuracy"])]
    # a run shorter than log_every_n_steps logs no step, and makes no empty run for TensorBoard to list
    train(apply_overrides(cfg, ["tensorboard.log_every_n_steps=1000"]), out=tmp_path / "short", quiet=True,
          report=False)
    assert not (tmp_path / "short" / "tensorboard" / "steps").exists()
    assert [e.value for e in acc.Scalars("final/best_epoch")] == [1.0]
