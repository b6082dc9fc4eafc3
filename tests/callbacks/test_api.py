"""The callback API from a user's side, build_callbacks and --early-stopping parsing."""

import pytest

from fake_trainer import FakeTrainer, drive, epochs
from mnistlab.callbacks import (
    GL,
    PQ,
    UP,
    Callback,
    CallbackList,
    EarlyStopping,
    History,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TensorBoard,
    build_callbacks,
    parse_early_stopping,
)
from mnistlab.config import Config, apply_overrides
from mnistlab.errors import ConfigError


class StopAtAccuracy(Callback):
    """What a user writes: stop once validation accuracy reaches a target."""

    def __init__(self, target: float) -> None:
        self.target = target

    def on_epoch_end(self, epoch, metrics, trainer):
        if metrics["val_accuracy"] >= self.target:
            trainer.request_stop(f"val_accuracy {metrics['val_accuracy']:.4f} >= {self.target}")


def test_a_user_callback_stops_training():
    trainer = FakeTrainer()
    rows = epochs(val_accuracy=[0.90, 0.97, 0.985, 0.991, 0.995])
    assert drive([StopAtAccuracy(0.99)], rows, trainer) == 4
    assert trainer.stop_reasons == ["val_accuracy 0.9910 >= 0.99"]


def test_a_user_callback_alongside_the_built_in_ones(tmp_path):
    trainer = FakeTrainer(run_dir=tmp_path)
    rows = epochs(val_accuracy=[0.90, 0.97, 0.991, 0.5])
    assert drive([History(), StopAtAccuracy(0.99), EarlyStopping(patience=5)], rows, trainer) == 3
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4  # header + 3 epochs


def names(cbs):
    return [type(cb).__name__ for cb in cbs]


def test_a_callback_state_that_checkpoints_cannot_hold_is_named_at_once():
    import datetime

    import numpy as np
    import torch

    class Stamped(Callback):
        def __init__(self, value):
            self.value = value

        def state_dict(self):
            return {"value": self.value}

    # Plain data and tensors load with weights_only=True: accepted.
    ok = CallbackList([History(), Stamped([1, "a", {"b": 2.5}, torch.ones(2), None, (3, 4)])])
    assert ok.state_dict()["user:Stamped"]["value"][1] == "a"
    # A datetime or a NumPy number would have made every checkpoint of the run unreadable (found at the final test).
    for value, kind in ((datetime.datetime(2026, 11, 30), "datetime"), (np.float64(0.5), "numpy")):
        with pytest.raises(ConfigError, match=rf"callback Stamped: its state_dict\(\) holds objects that checkpoints "
                                              rf"cannot hold .*{kind}.*float\(x\) for a NumPy number"):
            CallbackList([History(), Stamped(value)]).state_dict()
    # What cannot even be saved (a lock, a lambda) escaped as a bare TypeError or PicklingError, naming no callback
    import threading

    for value in (threading.Lock(), lambda: 1):
        with pytest.raises(ConfigError, match=r"callback Stamped: its state_dict\(\) holds objects that checkpoints "
                                              r"cannot hold \(it cannot be saved at all"):
            CallbackList([History(), Stamped(value)]).state_dict()


def test_build_callbacks_defaults(tmp_path):
    assert names(build_callbacks(Config(), tmp_path)) == ["History", "ModelCheckpoint", "TensorBoard"]
    assert names(build_callbacks(Config(), None)) == []


@pytest.mark.parametrize(
    "overrides, cls",
    [
        (["early_stopping.criterion=patience", "early_stopping.patience=4"], EarlyStopping),
        (["early_stopping.criterion=gl", "early_stopping.alpha=2"], GL),
        (["early_stopping.criterion=pq", "early_stopping.strip=3"], PQ),
        (["early_stopping.criterion=up", "early_stopping.strips=2", "early_stopping.error=error"], UP),
    ],
)
def test_build_callbacks_early_stopping(tmp_path, overrides, cls):
    cfg = apply_overrides(Config(), overrides + ["tensorboard.enabled=false", "early_stopping.restore_best_weights=true"])
    cbs = build_callbacks(cfg, tmp_path)
    assert names(cbs) == ["History", "ModelCheckpoint", cls.__name__]
    stopper = cbs[-1]
    assert stopper.restore_best_weights
    if cls is EarlyStopping:
        assert stopper.patience == 4
    if cls is GL:
        assert stopper.alpha == 2.0
    if cls is PQ:
        assert stopper.strip == 3
    if cls is UP:
        assert (stopper.strips, stopper.val_key) == (2, "val_error")


def test_build_callbacks_reduce_lr_and_checkpoint_settings(tmp_path):
    cfg = apply_overrides(
        Config(),
        {"reduce_lr.enabled": True, "reduce_lr.patience": 2, "checkpoint.save_top_k": 3, "checkpoint.monitor": "val_loss"},
    )
    cbs = {type(cb).__name__: cb for cb in build_callbacks(cfg, tmp_path)}
    assert isinstance(cbs["ReduceLROnPlateau"], ReduceLROnPlateau) and cbs["ReduceLROnPlateau"].patience == 2
    ckpt = cbs["ModelCheckpoint"]
    assert isinstance(ckpt, ModelCheckpoint) and (ckpt.save_top_k, ckpt.monitor, ckpt.mode) == (3, "val_loss", "min")
    tb = cbs["TensorBoard"]
    assert isinstance(tb, TensorBoard) and tb.hparams["reduce_lr.patience"] == 2 and "model.name" in tb.hparams


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("gl:5", {"early_stopping.criterion": "gl", "early_stopping.alpha": 5.0}),
        ("pq:0.5", {"early_stopping.criterion": "pq", "early_stopping.alpha": 0.5}),
        ("up:3", {"early_stopping.criterion": "up", "early_stopping.strips": 3}),
        ("patience:10", {"early_stopping.criterion": "patience", "early_stopping.patience": 10}),
        ("GL", {"early_stopping.criterion": "gl"}),
        ("none", {"early_stopping.criterion": "none"}),
    ],
)
def test_parse_early_stopping(spec, expected):
    assert parse_early_stopping(spec) == expected
    apply_overrides(Config(), expected)  # every result is a valid override


@pytest.mark.parametrize("spec", ["", "gl:", "gl:five", "up:0", "up:1.5", "patience:-1", "median:3", "none:1", "pq:nan"])
def test_bad_early_stopping_spec_lists_the_forms(spec):
    with pytest.raises(ConfigError, match="gl:ALPHA .*pq:ALPHA.*up:S"):
        parse_early_stopping(spec)
