"""Resume is exact on CPU: 2 epochs in one go == 1 epoch, then resume for 1 more."""

import json

import pytest
import torch

from mnistlab.config import Config, apply_overrides
from mnistlab.data import load_data
from mnistlab.errors import CheckpointError, ConfigError, RunDirError
from mnistlab.training import read_checkpoint, train


def small_cfg(root, *overrides):
    return apply_overrides(
        Config(),
        [
            f"data.dir={root}",
            "data.train_limit=1500", "data.test_limit=2000",
            "data.val_size=500",
            "model.name=cnn",
            "model.dropout=0.25",  # dropout draws from the global RNG, which must be restored too
            "train.batch_size=100",
            "train.threads=1",
            "tensorboard.enabled=false",
            *overrides,
        ],
    )


def weights(run_dir):
    return read_checkpoint(run_dir / "last.ckpt")["model"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_plus_one_epochs_equals_two(mnist_root, tmp_path, precision):
    # bf16 on a CPU without bf16 instructions is emulated (9-13x fp32's time): a third of the images there.
    # A quarter of the width (channels 4 and 8): what must come back on resume (weights, optimizer moments, the
    # schedule's step, the RNG of dropout) is the same at any width, and torch.equal compares every weight; the
    # runs' three tests of 10,000 images cost a third as much (bf16: 15 s of CPU at full width, 4.5 s).
    cfg = small_cfg(mnist_root, "schedule.name=step", "schedule.step_epochs=1", "schedule.gamma=0.5",
                    f"train.precision={precision}", "model.width=0.25",
                    *(["data.train_limit=500"] if precision == "bf16" else []))
    full = train(apply_overrides(cfg, ["train.epochs=2"]), out=tmp_path / "full", quiet=True)
    train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "half", quiet=True)
    resumed = train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "half", quiet=True)

    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    def without_time(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert without_time(full.fit.history) == without_time(resumed.fit.history)
    assert full.summary["test_accuracy"] == resumed.summary["test_accuracy"]
    assert json.loads((tmp_path / "half" / "summary.json").read_text())["epochs"] == 2


def test_a_second_run_into_the_same_folder_is_refused(mnist_root, tmp_path):
    cfg = small_cfg(mnist_root, "train.epochs=1", "data.train_limit=300")
    train(cfg, out=tmp_path / "run", quiet=True)
    with pytest.raises(RunDirError, match="already holds a run; continue it with `mnistlab train --resume"):
        train(cfg, out=tmp_path / "run", quiet=True)


class InterruptAt:
    """Sends this process SIGINT when the global step reaches ``step`` (as Ctrl-C would)."""

    def __init__(self, step):
        self.step = step

    def __getattr__(self, hook):  # every other hook is a no-op
        if hook.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(hook)

    def on_batch_end(self, step, metrics, trainer):
        if step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_interrupted_run_with_early_stopping_and_reduce_lr_resumes_identically(mnist_root, tmp_path):
    from mnistlab.training import TrainingInterrupted

    # Large min_delta / threshold so both callbacks act within a few tiny epochs (tuned in fp32, which
    # precision auto is not on a CPU with bf16 instructions; at a quarter width: channels 4 and 8, as cheap as
    # a run gets, and both still act, as the asserts on the full run check).
    cfg = small_cfg(
        mnist_root, "train.epochs=8", "data.train_limit=600", "schedule.name=constant", "train.precision=fp32",
        "model.width=0.25",
        "early_stopping.criterion=patience", "early_stopping.monitor=val_loss", "early_stopping.patience=2",
        "early_stopping.min_delta=0.1", "early_stopping.restore_best_weights=true",
        "reduce_lr.enabled=true", "reduce_lr.patience=1", "reduce_lr.threshold=0.3", "reduce_lr.factor=0.5",
    )
    full = train(cfg, out=tmp_path / "full", quiet=True)
    assert full.fit.stopped_by == "early_stopping", full.fit.stop_reason
    assert full.fit.epochs < 8
    lrs = [row["lr"] for row in full.fit.history]
    assert min(lrs) < lrs[0], "ReduceLROnPlateau never acted; the test would not test it"

    # Interrupt twice, mid-epoch (6 batches per epoch), then resume to the end.
    for step in (9, 20):
        with pytest.raises(TrainingInterrupted):
            resume = tmp_path / "cut" if (tmp_path / "cut").exists() else None
            train(cfg, out=None if resume else tmp_path / "cut", resume=resume, quiet=True,
                  callbacks=[InterruptAt(step)])
    cut = train(cfg, resume=tmp_path / "cut", quiet=True)

    assert cut.fit.stop_reason == full.fit.stop_reason
    assert cut.fit.epochs == full.fit.epochs
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(cut.fit.history) == drop(full.fit.history)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # restore_best_weights acted at the end of both runs the same way
    fa, fb = full.fit.model.state_dict(), cut.fit.model.state_dict()
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert full.summary["test_accuracy"] == cut.summary["test_accuracy"]


def test_an_early_stopped_run_trains_on_only_when_resumed_with_new_settings(mnist_root, tmp_path):
    # min_delta larger than any loss change: no epoch after the first counts as an improvement,
    # so patience 1 stops the run after epoch 2 of 4.
    # A quarter of the width (channels 4 and 8): the stop is set by min_delta, whatever the net learns.
    cfg = small_cfg(
        mnist_root, "data.train_limit=300", "train.epochs=4", "early_stopping.criterion=patience",
        "early_stopping.patience=1", "early_stopping.min_delta=100", "model.width=0.25",
    )
    run = tmp_path / "run"
    first = train(cfg, out=run, quiet=True)
    assert (first.summary["stopped_by"], first.summary["epochs"]) == ("early_stopping", 2)

    as_it_was = train(cfg, resume=run, quiet=True)  # what the stored config says: the stop stands
    assert (as_it_was.summary["stopped_by"], as_it_was.summary["epochs"]) == ("early_stopping", 2)
    assert as_it_was.fit.history == first.fit.history

    # Settings that change how or what is written, not what is trained, leave the stop standing. TTA is given
    # apart from train.threads=2: together, the test's five passes over 10,000 images ran on two threads, whose
    # waiting on a busy 2-core machine cost 10-28 s of CPU (one thread: 2 s).
    for unchanged in (["train.eval_batch_size=250", "train.threads=2", "checkpoint.save_top_k=2",
                       "tensorboard.histograms=false"], ["tta.enabled=true"]):
        relooked = train(apply_overrides(cfg, unchanged), resume=run, quiet=True)
        assert (relooked.summary["stopped_by"], relooked.summary["epochs"]) == ("early_stopping", 2), unchanged
        assert relooked.fit.history == first.fit.history, unchanged

    # Fewer epochs than were trained, or a file a callback chose, cannot be continued from: refused, nothing written.
    config_toml = (run / "config.toml").read_bytes()
    with pytest.raises(ConfigError, match="train.epochs is 1, but the run has trained 2 epochs: resume with --epochs 2"):
        train(apply_overrides(cfg, ["train.epochs=1"]), resume=run, quiet=True)
    with pytest.raises(CheckpointError, match="best.ckpt is not a last.ckpt: --resume continues a run in its own "
                                              "folder, .* use --init-from"):
        train(apply_overrides(cfg, ["early_stopping.patience=5"]), resume=run / "best.ckpt", quiet=True)
    assert (run / "config.toml").read_bytes() == config_toml

    # A new patience given on resume wins over the stored one; the counters continue from the checkpoint.
    stopped = read_checkpoint(run / "last.ckpt")["callbacks"]["EarlyStopping"]["stopped_epoch"]
    patient = train(apply_overrides(cfg, ["early_stopping.patience=5"]), resume=run, quiet=True)
    assert (patient.summary["stopped_by"], patient.summary["epochs"]) == ("max_epochs", 4)
    assert [h["epoch"] for h in patient.fit.history] == [1, 2, 3, 4]
    # the stop of before the resume is no longer in the state (the report drew it as the run's end)
    assert stopped == 2 and read_checkpoint(run / "last.ckpt")["callbacks"]["EarlyStopping"]["stopped_epoch"] is None


def test_an_interrupted_epoch_counts_its_seconds_from_before_the_interruption(mnist_root, tmp_path, capfd):
    from mnistlab.training import TrainingInterrupted

    # 15 batches an epoch; Ctrl-C after batch 6 of epoch 1.
    cfg = small_cfg(mnist_root, "train.epochs=2")
    with pytest.raises(TrainingInterrupted) as caught:
        train(cfg, out=tmp_path / "run", quiet=True, callbacks=[InterruptAt(6)])
    # The advice to resume is the exception's, for `mnistlab train` to print: train() itself printed it, so a
    # sweep's interrupted trial told the user to resume a folder the study would never see.
    assert caught.value.run_dir == tmp_path / "run"
    assert str(caught.value).endswith(f"last.ckpt\nresume with: mnistlab train --resume {tmp_path / 'run'}")
    assert "resume with" not in capfd.readouterr().err
    cut = read_checkpoint(tmp_path / "run" / "last.ckpt")
    assert (cut["batch"], cut["resumable"]) == (6, True)
    assert cut["partial_seconds"] == pytest.approx(cut["train_seconds"]) and cut["partial_seconds"] > 0

    # The place inside the epoch holds only with the batches laid out as before: another batch size is refused.
    with pytest.raises(ConfigError, match="inside epoch 1, after batch 6; .*train.batch_size was 100, now 50"):
        train(apply_overrides(cfg, ["train.batch_size=50"]), resume=tmp_path / "run", quiet=True)

    capfd.readouterr()
    resumed = train(cfg, resume=tmp_path / "run")
    # the place, as the epoch and batch it is (it said "after epoch 0 (step 6)")
    assert f"resuming {tmp_path / 'run'} inside epoch 1, after batch 6 of 15 (step 6)\n" in capfd.readouterr().out
    seconds = [row["seconds"] for row in resumed.fit.history]
    assert seconds[0] > cut["partial_seconds"]  # the 6 batches before Ctrl-C count in epoch 1's time
    # ... so that the epochs' times add up to the training time (which train.max_minutes limits).
    assert sum(seconds) == pytest.approx(resumed.fit.train_seconds)


def test_optimizer_settings_given_when_resuming_are_the_ones_trained_under(mnist_root, tmp_path):
    # optimizer.load_state_dict brought back each group's stored settings: a resume with a new weight decay
    # or betas trained with the old ones, bit for bit, while config.toml said otherwise.
    cfg = small_cfg(mnist_root, "data.train_limit=300", "schedule.name=constant")
    train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "a", quiet=True)
    import shutil
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    two = apply_overrides(cfg, ["train.epochs=2"])
    train(two, resume=tmp_path / "a", quiet=True)
    train(apply_overrides(two, ["optimizer.weight_decay=0.5", "optimizer.betas=[0.5, 0.5]"]), resume=tmp_path / "b",
          quiet=True)
    groups = read_checkpoint(tmp_path / "b" / "last.ckpt")["optimizer"]["param_groups"]
    assert {(g["weight_decay"], tuple(g["betas"])) for g in groups} == {(0.5, (0.5, 0.5))}
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupt_after_an_epochs_last_step_resumes_identically(mnist_root, tmp_path):
    # Ctrl-C after the last step of epoch 1, before its validation: last.ckpt says batch 6 of 6, which a check of
    # the stored batch must take (it refused "batch 6 of an epoch of 6 batches"; a random-kill test found it).
    from mnistlab.training import TrainingInterrupted

    cfg = small_cfg(mnist_root, "train.epochs=2", "data.train_limit=600", "schedule.name=constant")
    full = train(cfg, out=tmp_path / "full", quiet=True)
    with pytest.raises(TrainingInterrupted):
        train(cfg, out=tmp_path / "cut", quiet=True, callbacks=[InterruptAt(6)])
    stored = read_checkpoint(tmp_path / "cut" / "last.ckpt")
    assert (stored["epoch"], stored["batch"]) == (0, 6)
    cut = train(cfg, resume=tmp_path / "cut", quiet=True)
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(cut.fit.history) == drop(full.fit.history)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_resumed_and_interrupted_keeps_no_test_predictions_of_its_old_test(mnist_root, tmp_path):
    # summary.json then says "interrupted", with no test result; `mnistlab report` drew its confusion matrix
    # and misclassified images from the old test's test_predictions.npz as if they were this state's.
    from mnistlab.report import save_test_predictions
    from mnistlab.training import TrainingInterrupted

    cfg = small_cfg(mnist_root, "train.epochs=1", "data.train_limit=300", "schedule.name=constant")
    first = train(cfg, out=tmp_path / "run", quiet=True)
    data = load_data(cfg.data)
    save_test_predictions(tmp_path / "run", first.test, data.test.images, data.classes)  # as report=True writes it
    with pytest.raises(TrainingInterrupted):
        train(apply_overrides(cfg, ["train.epochs=3"]), resume=tmp_path / "run", quiet=True,
              callbacks=[InterruptAt(first.fit.steps + 2)])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "interrupted" and "test_accuracy" not in summary
    assert not (tmp_path / "run" / "test_predictions.npz").exists()


def test_a_run_interrupted_inside_an_epoch_resumes_only_with_the_same_epoch_length(mnist_root, tmp_path):
    # Another number of processes (--nproc) changes how small the last batch may be, so an epoch's batches:
    # mid-epoch, the rest of the epoch would then hold other images (a leftover skipped or trained twice),
    # and the schedule ran a step past its end. Here the stored epoch length is changed as that would.
    from mnistlab.training import TrainingInterrupted
    from mnistlab.training.checkpoint import content_digest

    cfg = small_cfg(mnist_root, "train.epochs=2", "data.train_limit=300")
    with pytest.raises(TrainingInterrupted):
        train(cfg, out=tmp_path / "cut", quiet=True, callbacks=[InterruptAt(2)])
    path = tmp_path / "cut" / "last.ckpt"
    stored = torch.load(path, weights_only=True)
    assert stored["batch"] == 2
    steps = stored["steps_per_epoch"]
    stored["steps_per_epoch"] = steps + 1
    stored["content_sha256"] = content_digest(stored)
    torch.save(stored, path)
    with pytest.raises(ConfigError, match=rf"interrupted inside epoch 1, after batch 2 of {steps + 1}; with 1 process "
                                          rf"the epoch would have {steps} batches.*interrupted with, "
                                          r"1 \(without --nproc\)$"):
        train(cfg, resume=tmp_path / "cut", quiet=True)
    # Written by 2 processes (each one's random state stored): the message says how many, as it did not
    stored["rng_ranks"] = [stored["rng"], stored["rng"]]
    stored["content_sha256"] = content_digest(stored)
    torch.save(stored, path)
    with pytest.raises(ConfigError, match=r"the number of processes it was interrupted with, 2 \(--nproc 2\)$"):
        train(cfg, resume=tmp_path / "cut", quiet=True)


def test_resuming_a_one_cycle_run_with_more_epochs_warns_that_the_rate_is_replanned(mnist_root, tmp_path, capsys):
    cfg = small_cfg(mnist_root, "data.train_limit=300", "train.epochs=1")  # one-cycle, the default
    train(cfg, out=tmp_path / "run", quiet=True)
    capsys.readouterr()
    train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "run", quiet=True)
    err = capsys.readouterr().err
    assert "warning: train.epochs was 1, now 2: the onecycle schedule is planned over all the run's steps (now 6), " \
        "so the learning rate now follows the new plan from step 3 on (it may rise again)" in err


def test_a_resumed_run_adds_to_the_compile_seconds_of_its_first_part(mnist_root, tmp_path):
    # The first part's compile time (set here, as train.compile would have left it) is kept through a resume
    # without compiling, as train_seconds is: in summary.json and in the next last.ckpt.
    from mnistlab.training.checkpoint import content_digest

    cfg = small_cfg(mnist_root, "data.train_limit=300")
    first = train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "run", quiet=True)
    assert "compile_seconds" not in first.summary  # train.compile is off
    ckpt = tmp_path / "run" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)
    stored["compile_seconds"] = 12.5
    stored["content_sha256"] = content_digest(stored)
    torch.save(stored, ckpt)
    resumed = train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "run", quiet=True)
    assert resumed.summary["compile_seconds"] == 12.5
    assert read_checkpoint(ckpt)["compile_seconds"] == 12.5


def test_micro_batches_train_what_whole_batches_train_in_a_parts_memory(mnist_root, tmp_path):
    # train.micro_batch_size (Lightning's gradient accumulation): each batch of 100 in parts of at most 32, forward
    # and backward in turn, one optimizer step per batch. Without batch norm or dropout (which draws its masks
    # part by part) the same weights, to float rounding.
    cfg = small_cfg(mnist_root, "train.epochs=2", "data.train_limit=600", "train.precision=fp32",
                    "schedule.name=constant", "model.dropout=0.0")
    whole = train(cfg, out=tmp_path / "whole", quiet=True)
    parts = train(apply_overrides(cfg, ["train.micro_batch_size=32"]), out=tmp_path / "parts", quiet=True)
    assert parts.fit.steps == whole.fit.steps == 12
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    for h1, h2 in zip(whole.fit.history, parts.fit.history, strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], abs=1e-6)
        assert h2["val_accuracy"] == pytest.approx(h1["val_accuracy"], abs=2e-3)


def test_micro_batches_leave_batch_norm_no_part_of_one_image(mnist_small):
    from mnistlab.models import build_model
    from mnistlab.training.fit import Trainer

    cfg = apply_overrides(Config(), ["train.micro_batch_size=2", "train.threads=1"])
    x, y = torch.zeros(5, 1, 28, 28), torch.zeros(5, dtype=torch.long)
    plain = Trainer(build_model("cnn", width=0.25), mnist_small, cfg)
    assert [len(part) for _, part, _ in plain._parts(x, y, None)] == [2, 2, 1]  # as even as can be, at most 2 each
    normed = Trainer(build_model("cnn", width=0.25, batch_norm=True), mnist_small, cfg)
    assert [len(part) for _, part, _ in normed._parts(x, y, None)] == [3, 2]  # batch norm cannot normalize one image


# train.max_steps. small_cfg's 1,500 images in batches of 100: 15 steps an epoch.
def test_max_steps_ends_the_run_in_mid_epoch_with_the_schedule_planned_over_its_steps(mnist_root, tmp_path, capsys):
    cfg = small_cfg(mnist_root, "train.epochs=2", "train.max_steps=20")  # one-cycle, the default
    run = train(cfg, out=tmp_path / "run", quiet=True)  # the last epoch is cut short: max steps, not max epochs
    assert (run.fit.steps, run.fit.epochs, run.fit.stopped_by) == (20, 2, "max_steps")
    assert run.fit.stop_reason == run.summary["stop_reason"] == "max steps reached (20)"
    # epoch 2 (5 of its 15 batches) was validated and recorded like the first
    assert [row["epoch"] for row in run.fit.history] == [1, 2] and 0 < run.fit.history[1]["val_accuracy"] <= 1
    # the one-cycle schedule ended at the last step: the final rate, not the rate 20 steps into 30
    end = cfg.optimizer.lr / cfg.schedule.div_factor / cfg.schedule.final_div_factor
    assert run.fit.history[-1]["lr"] == pytest.approx(end)
    stored = read_checkpoint(tmp_path / "run" / "last.ckpt")
    assert (stored["epoch"], stored["batch"], stored["step"]) == (2, 0, 20)
    # Resumed for a third epoch without the limit: the schedule spans the 20 steps taken and epoch 3's 15, not 3
    # whole epochs (45), which left the run at a rate 10 steps short of the one-cycle's final one.
    capsys.readouterr()
    more = train(apply_overrides(cfg, ["train.epochs=3", "train.max_steps=none"]), resume=tmp_path / "run", quiet=True)
    assert (more.fit.steps, more.fit.epochs, more.fit.stopped_by) == (35, 3, "max_epochs")
    assert more.fit.history[-1]["lr"] == pytest.approx(end)
    assert "the onecycle schedule is planned over all the run's steps (now 35)" in capsys.readouterr().err
    # more steps than the epochs hold: the epochs end the run, as said
    whole = train(small_cfg(mnist_root, "train.epochs=1", "train.max_steps=16", "data.train_limit=300"),
                  out=tmp_path / "whole", quiet=True)
    assert (whole.fit.steps, whole.fit.stopped_by) == (3, "max_epochs")
    assert ("train.max_steps = 16 is more than the 3 steps of train.epochs = 1: the run ends after its epochs"
            in capsys.readouterr().err)


def test_max_steps_at_an_epochs_end_stops_there_and_a_resume_with_more_steps_trains_on(mnist_root, tmp_path):
    cfg = small_cfg(mnist_root, "train.epochs=4", "train.max_steps=15", "schedule.name=constant")
    first = train(cfg, out=tmp_path / "cut", quiet=True)
    assert (first.fit.epochs, first.fit.steps, first.fit.stopped_by) == (1, 15, "max_steps")
    with pytest.raises(ConfigError, match="train.max_steps is 10, but the run has taken 15 steps: resume with "
                                          "--max-steps 15 or more"):
        train(apply_overrides(cfg, ["train.max_steps=10"]), resume=tmp_path / "cut", quiet=True)
    again = train(cfg, resume=tmp_path / "cut", quiet=True)  # as it was: nothing is left
    assert (again.fit.epochs, again.fit.steps, again.fit.stopped_by) == (1, 15, "max_steps")
    more = train(apply_overrides(cfg, ["train.max_steps=30"]), resume=tmp_path / "cut", quiet=True)
    assert (more.fit.epochs, more.fit.steps, more.fit.stopped_by) == (2, 30, "max_steps")
    # 15 + 15 steps at epochs' ends train what 2 epochs in one go train
    full = train(small_cfg(mnist_root, "train.epochs=2", "schedule.name=constant"), out=tmp_path / "full", quiet=True)
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(more.fit.history) == drop(full.fit.history)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupt_at_the_last_of_max_steps_resumes_to_the_same_end(mnist_root, tmp_path):
    # Ctrl-C at step 20 (batch 5 of epoch 2) saves that place; the resume takes no step, validates epoch 2 from
    # its 5 batches' sums, and ends as the uninterrupted run did.
    from mnistlab.training import TrainingInterrupted

    cfg = small_cfg(mnist_root, "train.epochs=3", "train.max_steps=20")
    whole = train(cfg, out=tmp_path / "whole", quiet=True)
    with pytest.raises(TrainingInterrupted):
        train(cfg, out=tmp_path / "cut", quiet=True, callbacks=[InterruptAt(20)])
    stored = read_checkpoint(tmp_path / "cut" / "last.ckpt")
    assert (stored["epoch"], stored["batch"], stored["step"]) == (1, 5, 20)
    cut = train(cfg, resume=tmp_path / "cut", quiet=True)
    assert (cut.fit.steps, cut.fit.stopped_by) == (20, "max_steps")
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(cut.fit.history) == drop(whole.fit.history)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
