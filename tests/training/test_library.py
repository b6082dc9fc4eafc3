"""mnistlab as a library: fit() with a run folder, and train() called from a longer-lived process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mnistlab import Config, apply_overrides, build_model, fit, load_data, load_model, train
from mnistlab.config import DataConfig
from mnistlab.errors import ConfigError


def tiny_cfg(mnist_root, *extra: str) -> Config:
    return apply_overrides(Config(), [f"data.dir={mnist_root}", "data.val_size=500", "data.train_limit=500",
                                      "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
                                      "train.epochs=1", "train.progress=false", "tensorboard.enabled=false",
                                      "model.name=cnn", "model.width=0.25", *extra])


def test_fit_with_a_run_folder_needs_the_config_to_describe_the_model(mnist_small, mnist_root, tmp_path):
    model = build_model("cnn", width=0.25, mean=mnist_small.mean, std=mnist_small.std)
    # The README's example builds cnn under the default config (model.name = fast): its checkpoints
    # would rebuild a fast net, which the weights do not fit. Refused before any training.
    with pytest.raises(ConfigError, match=r"the config describes another model than the one given \(model.name = "
                                          r"'fast', .*shapes differ"):
        fit(model, mnist_small, Config(), run_dir=tmp_path / "a")
    assert not (tmp_path / "a").exists()

    run_dir = tmp_path / "not" / "yet"  # made, not a failure after the first epoch
    cfg = tiny_cfg(mnist_root, "model.dropout=0.5")
    twin = build_model("cnn", width=0.25, dropout=0.5, mean=mnist_small.mean, std=mnist_small.std)
    model = build_model("cnn", width=0.25, dropout=0.5, mean=mnist_small.mean, std=mnist_small.std)
    model.load_state_dict(twin.state_dict())
    torch.manual_seed(5)
    fit(model, mnist_small, cfg, run_dir=run_dir)
    loaded = load_model(run_dir / "last.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # The check drew nothing from the caller's random stream: the dropout masks are those of a run without it.
    torch.manual_seed(5)
    fit(twin, mnist_small, cfg)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), model.state_dict().values()))


def test_fit_refuses_a_model_with_the_config_s_tensors_but_other_outputs(mnist_small, mnist_root, tmp_path):
    # lenet5 pads its 28x28 input by 2 pixels; padded by 3 its tensors have the same shapes (34 -> 30 -> 15 -> 11
    # -> 5), so the shape check passed, and last.ckpt rebuilt the other network (37% against 44% in memory)
    model = build_model("lenet5", width=0.25, padding=3, mean=mnist_small.mean, std=mnist_small.std)
    with pytest.raises(ConfigError, match=r"the same tensors, but other outputs on the same images"):
        fit(model, mnist_small, tiny_cfg(mnist_root, "model.name=lenet5"), run_dir=tmp_path / "l5")
    assert not (tmp_path / "l5").exists()


def test_a_run_without_any_stdout_trains_and_prints_nothing(mnist_root, tmp_path, monkeypatch):
    # sys.stdout is None under pythonw and some service hosts: Display called None.isatty()
    import sys

    monkeypatch.setattr(sys, "stdout", None)
    result = train(tiny_cfg(mnist_root, "train.progress=true"), out=tmp_path / "run", report=False)
    assert result.summary["test_accuracy"] > 0.1


def test_set_lr_where_the_schedule_s_rate_is_0_changes_nothing(mnist_root, tmp_path, caplog):
    # At the end of a cosine schedule (min_lr 0) the next scheduled rate is 0: no scale reaches the rate asked
    # for, and the scale of 0 stored instead held the rate at 0 after a resume with more epochs.
    from mnistlab.callbacks import Callback

    class SetLr(Callback):
        def on_epoch_end(self, epoch, metrics, trainer):
            trainer.set_lr(0.005)

    cfg = tiny_cfg(mnist_root, "schedule.name=cosine", "train.epochs=2")
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        train(cfg, out=tmp_path / "cos", callbacks=[SetLr()], quiet=True, report=False)
    assert "set_lr(0.005) changes nothing: the schedule's rate for the next step is 0" in caplog.text
    from mnistlab.training import read_checkpoint

    assert read_checkpoint(tmp_path / "cos" / "last.ckpt")["lr_scale"] > 0  # epoch 1's scale, kept


def test_evaluate_on_no_images_gives_neither_a_loss_nor_an_accuracy(mnist_small):
    import math

    from mnistlab import evaluate
    from mnistlab.data.datasets import Split

    empty = Split(mnist_small.test.images[:0], mnist_small.test.labels[:0], None)
    ev = evaluate(build_model("cnn", width=0.25), empty, num_classes=10)
    assert math.isnan(ev.accuracy) and math.isnan(ev.loss)  # the loss was 0.0, a perfect score


def test_train_gives_the_process_its_threads_and_random_stream_back(mnist_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a script: no logging set up (pytest adds some)
    torch.set_num_threads(2)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    # reduce_lr with a threshold no epoch meets: it lowers the rate after epoch 1 and says so.
    cfg = tiny_cfg(mnist_root, "train.threads=1", "train.epochs=2", "reduce_lr.enabled=true", "reduce_lr.patience=0",
                   "reduce_lr.threshold=10")
    result = train(cfg, out=tmp_path / "run", report=False)
    assert result.summary["threads"] == 1
    assert torch.get_num_threads() == 2  # not the run's 1: a next run with threads unset gets the default
    assert torch.equal(torch.rand(4), expected)  # the caller's random stream goes on as if no run had happened
    assert "epoch 2: reducing learning rate" in capsys.readouterr().out  # the callbacks' messages, as in the CLI
    assert not logging.getLogger("mnistlab").handlers  # and the printing ends with the run


def test_fit_trains_on_the_configs_threads_and_gives_the_callers_count_back(mnist_small, mnist_root):
    # fit() ignored train.threads (train() applied it): a notebook's `--threads 1` config trained on all cores.
    from mnistlab import Callback

    class Threads(Callback):
        seen: list[int] = []

        def on_epoch_end(self, epoch, metrics, trainer):
            self.seen.append(torch.get_num_threads())

    torch.set_num_threads(2)
    model = build_model("cnn", width=0.25, mean=mnist_small.mean, std=mnist_small.std)
    fit(model, mnist_small, tiny_cfg(mnist_root, "train.threads=1"), callbacks=[Threads()])
    assert Threads.seen == [1] and torch.get_num_threads() == 2
    fit(model, mnist_small, tiny_cfg(mnist_root), callbacks=[Threads()])  # unset: the process's count
    assert Threads.seen == [1, 2] and torch.get_num_threads() == 2


def test_a_path_is_a_data_dir():
    assert DataConfig(dir=Path("/data/mnist")).dir == "/data/mnist"  # written to config.toml as text


def test_restored_weights_are_the_runs_best_ckpt_and_what_it_tests(mnist_small, mnist_root, tmp_path, capsys):
    from mnistlab.training import evaluate, read_checkpoint

    # best.ckpt by [checkpoint] would be the last epoch (training accuracy rises); the stopping rule's best is
    # epoch 1 (no later epoch beats it by min_delta). restore_best_weights makes epoch 1 the run's model.
    cfg = tiny_cfg(mnist_root, "train.threads=1", "train.epochs=3", "checkpoint.monitor=train_accuracy",
                   "early_stopping.criterion=patience", "early_stopping.monitor=train_loss",
                   "early_stopping.min_delta=100", "early_stopping.patience=5",
                   "early_stopping.restore_best_weights=true")
    result = train(cfg, out=tmp_path / "run", report=False, quiet=True)
    assert result.fit.epochs == 3 and result.fit.stopped_by == "max_epochs"
    assert "cannot stop a run of 3 epochs" in capsys.readouterr().err  # patience 5 never could: said at the start
    best = read_checkpoint(tmp_path / "run" / "best.ckpt")
    assert best["epoch"] == 1 and [h["epoch"] for h in best["history"]] == [1]
    final = result.fit.model.state_dict()
    assert all(torch.equal(best["model"][k], final[k].cpu()) for k in final)  # what stayed in memory
    last = read_checkpoint(tmp_path / "run" / "last.ckpt")  # resume goes on from where training was
    assert last["epoch"] == 3 and not all(torch.equal(last["model"][k], final[k].cpu()) for k in final)
    assert result.summary["best_epoch"] == 1 and result.summary["restored_by_early_stopping"]
    assert result.summary["evaluated"] == "best.ckpt"
    tested = evaluate(load_model(tmp_path / "run" / "best.ckpt"), load_data(cfg.data).test).accuracy  # its 2,000
    assert result.summary["test_accuracy"] == tested
    # [checkpoint]'s own choice is still kept, in its top-k file
    assert (tmp_path / "run" / f"epoch003-{result.fit.history[2]['val_accuracy']:.4f}.ckpt").is_file()


def test_fit_obeys_the_configs_early_stopping_and_reduce_lr(mnist_small, mnist_root):
    # min_delta no loss change reaches: patience 2 stops after epoch 3 of 5; a threshold no epoch meets makes
    # ReduceLROnPlateau halve the rate after epoch 2 (epoch 1 sets its best). fit() used to ignore both.
    cfg = tiny_cfg(mnist_root, "train.threads=1", "train.epochs=5", "schedule.name=constant",
                   "early_stopping.criterion=patience", "early_stopping.patience=2", "early_stopping.min_delta=100",
                   "reduce_lr.enabled=true", "reduce_lr.patience=0", "reduce_lr.threshold=10", "reduce_lr.factor=0.5")
    model = build_model("cnn", width=0.25, mean=mnist_small.mean, std=mnist_small.std)
    result = fit(model, mnist_small, cfg)
    assert result.epochs == 3 and result.stopped_by == "early_stopping", result.stop_reason
    lrs = [h["lr"] for h in result.history]
    assert lrs[1] == lrs[0] and lrs[2] == pytest.approx(lrs[0] / 2)
