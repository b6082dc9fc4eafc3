"""TensorBoard: a short real run (tiny conv net, real backward passes), read back with tensorboard's own readers."""

import time

import torch
import torch.nn.functional as F
from torch import nn
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from fake_trainer import FakeTrainer
from mnistlab.callbacks import CallbackList, TensorBoard

EPOCHS, BATCHES = 2, 2


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)
    )


def epoch_metrics(epoch):
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "train_accuracy": 0.1 * epoch, "train_error": 1 - 0.1 * epoch,
            "val_loss": 2.5 / epoch, "val_accuracy": 0.1, "val_error": 0.9, "lr": 0.1, "seconds": 1.0}


def fake_run(tmp_path, callbacks, first_epoch=1, last_epoch=EPOCHS, steps_done=None, interrupted=False):
    """Call the hooks as the trainer does, with real forward/backward/step on random uint8 images.

    A resumed run waits for a later second than the run before it by itself (readers order a folder's
    event files by name, which begins with the second the file was made).

    ``first_epoch`` > 1 resumes after epoch first_epoch - 1; ``steps_done`` (default: those epochs' steps) > 0
    with ``first_epoch`` 1 resumes inside the first epoch. ``interrupted``: no on_train_end, as after a signal."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 12, 12), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (40,), generator=g)
    model = tiny_model()
    trainer = FakeTrainer(run_dir=tmp_path, model=model, val=(images, labels))
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
    # named to be read last.
    files = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert [p.parent for p in files] == [log_dir, log_dir] and files[-1].name.endswith(".end")
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


def test_switches_turn_parts_off(tmp_path):
    fake_run(tmp_path, [TensorBoard(histograms=False, graph=False, images=False)])
    tags = accumulate(tmp_path / "tensorboard").Tags()
    assert tags["histograms"] == [] and tags["images"] == [] and tags["graph"] is False
    assert "loss/train" in tags["scalars"]


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
