"""Keras-style EarlyStopping driven with literal metric sequences."""

import logging

import pytest

from fake_trainer import FakeTrainer, drive, epochs, roundtrip, weight_epoch
from mnistlab.callbacks import CallbackList, EarlyStopping
from mnistlab.errors import ConfigError


def test_patience_without_improvement(trainer):
    # best 0.5 at epoch 2; epochs 3, 4, 5 do not improve -> patience 3 reached at epoch 5
    cb = EarlyStopping(patience=3)
    assert drive([cb], epochs(val_loss=[1.0, 0.5, 0.6, 0.5, 0.7, 0.1]), trainer) == 5
    assert trainer.stop_reasons == [
        "early stopping: val_loss did not improve for 3 epochs (patience 3; best 0.5 at epoch 2; now 0.7) at epoch 5"
    ]


def test_patience_with_min_delta():
    # min_delta 0.1: an improvement must go below best - 0.1.
    # t=1 best 1.0; t=2 0.8 < 0.9 -> best 0.8; t=3 0.75 !< 0.7 -> wait 1; t=4 0.72 !< 0.7 -> wait 2 -> stop at 4.
    rows = epochs(val_loss=[1.0, 0.8, 0.75, 0.72, 0.69])
    assert drive([EarlyStopping(patience=2, min_delta=0.1)], rows, FakeTrainer()) == 4
    # Without min_delta every epoch improves: no stop.
    assert drive([EarlyStopping(patience=2)], rows, FakeTrainer()) is None


def test_mode_max_for_accuracy():
    cb = EarlyStopping(monitor="val_accuracy", patience=1)
    assert cb.mode == "max"
    assert drive([cb], epochs(val_accuracy=[0.9, 0.95, 0.94]), FakeTrainer()) == 3


def test_patience_zero_stops_at_the_first_epoch_without_improvement():
    assert drive([EarlyStopping(patience=0)], epochs(val_loss=[1.0, 0.9, 0.95]), FakeTrainer()) == 3


def test_baseline_not_beaten():
    # baseline 0.9 on val_accuracy, patience 2: improvements below the baseline do not restart the count.
    # t=1: 0.5 improves, wait 1; t=2: 0.6 improves, wait 2 (improving epochs never stop, as in Keras);
    # t=3: 0.6 no improvement, wait 3 >= 2 -> stop at 3.
    trainer = FakeTrainer()
    cb = EarlyStopping(monitor="val_accuracy", patience=2, baseline=0.9)
    assert drive([cb], epochs(val_accuracy=[0.5, 0.6, 0.6]), trainer) == 3
    assert "did not beat the baseline 0.9 in 3 epochs" in trainer.stop_reasons[0]


def test_baseline_beaten_counts_normally():
    # t=1: 0.95 beats the baseline, wait 0; t=2, t=3 no improvement -> wait 2 -> stop at 3.
    trainer = FakeTrainer()
    cb = EarlyStopping(monitor="val_accuracy", patience=2, baseline=0.9)
    assert drive([cb], epochs(val_accuracy=[0.95, 0.94, 0.93]), trainer) == 3
    assert "did not improve for 2 epochs" in trainer.stop_reasons[0]


def test_start_epoch_ignores_earlier_epochs():
    # Epochs 1-2 are ignored; best 0.5 at epoch 3; epoch 4 does not improve -> stop at 4.
    rows = epochs(val_loss=[1.0, 2.0, 0.5, 0.6])
    assert drive([EarlyStopping(patience=1)], rows, FakeTrainer()) == 2
    cb = EarlyStopping(patience=1, start_epoch=3)
    assert drive([cb], rows, FakeTrainer()) == 4
    assert cb.best_epoch == 3


def test_nonfinite_value_stops_at_once():
    trainer = FakeTrainer()
    assert drive([EarlyStopping(patience=5)], epochs(val_loss=[1.0, float("nan"), 0.5]), trainer) == 2
    assert trainer.stop_reasons == ["early stopping: val_loss is nan at epoch 2"]
    # Switched off, NaN is just an epoch without improvement.
    cb = EarlyStopping(patience=1, stop_on_nonfinite=False)
    assert drive([cb], epochs(val_loss=[1.0, float("inf"), 0.5]), FakeTrainer()) == 2
    # ... but not at epoch 1, as in Keras: a first NaN is no evidence against the epochs to come
    cb = EarlyStopping(patience=1, stop_on_nonfinite=False, restore_best_weights=True)
    trainer = FakeTrainer()
    assert drive([cb], epochs(val_loss=[float("nan"), 0.5, 0.4]), trainer) is None
    assert cb.best_epoch == 3 and weight_epoch(trainer) == 3


def test_divergence_threshold():
    trainer = FakeTrainer()
    assert drive([EarlyStopping(patience=5, divergence_threshold=2.0)], epochs(val_loss=[1.0, 3.0]), trainer) == 2
    assert trainer.stop_reasons == ["early stopping: val_loss=3 > divergence threshold 2 at epoch 2"]


@pytest.mark.parametrize("monitor, values", [("val_loss", [1.0, 2.0, 2.0]), ("val_accuracy", [0.9, 0.5, 0.5])])
def test_a_value_equal_to_the_divergence_threshold_does_not_stop(monitor, values):
    # "worse than this": a value exactly at the threshold (2.0 for a loss, 0.5 for an accuracy) goes on.
    trainer = FakeTrainer()
    threshold = values[1]
    assert drive([EarlyStopping(monitor=monitor, patience=5, divergence_threshold=threshold)],
                 epochs(**{monitor: values}), trainer) is None
    assert trainer.stop_reasons == []


def test_restore_best_weights_after_a_stop(caplog):
    trainer = FakeTrainer()
    cb = EarlyStopping(patience=2, restore_best_weights=True)
    with caplog.at_level(logging.INFO, logger="mnistlab"):
        assert drive([cb], epochs(val_loss=[1.0, 0.4, 0.5, 0.6, 0.1]), trainer) == 4
    assert cb.best_epoch == 2 and cb.restored_epoch == 2
    assert weight_epoch(trainer) == 2  # the driver set every weight to 4 before epoch 4 ended
    assert trainer.restored == [2]  # through restore_weights, which makes them the run's best.ckpt
    assert "restored the weights of epoch 2" in caplog.text


def test_restore_best_weights_without_a_stop():
    trainer = FakeTrainer()
    cb = EarlyStopping(patience=10, restore_best_weights=True)
    assert drive([cb], epochs(val_loss=[1.0, 0.3, 0.5, 0.6]), trainer) is None
    assert cb.restored_epoch == 2 and weight_epoch(trainer) == 2


def test_no_restore_unless_asked():
    trainer = FakeTrainer()
    drive([EarlyStopping(patience=1)], epochs(val_loss=[1.0, 0.3, 0.5]), trainer)
    assert weight_epoch(trainer) == 3


ROWS = epochs(val_loss=[1.0, 0.5, 0.6, 0.55, 0.7, 0.8, 0.9, 1.0])  # best at 2; bad epochs 3, 4, 5, ...


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_resume_decides_as_uninterrupted(split):
    full = FakeTrainer()
    assert drive([EarlyStopping(patience=4, restore_best_weights=True)], ROWS, full) == 6

    cb = EarlyStopping(patience=4, restore_best_weights=True)
    drive([cb], ROWS[:split], FakeTrainer())
    state = roundtrip(CallbackList([cb]).state_dict())
    resumed = FakeTrainer()
    resumed.epoch = split
    cb2 = EarlyStopping(patience=4, restore_best_weights=True)
    assert drive([cb2], ROWS[split:], resumed, state=state) == 6
    assert resumed.stop_reasons == full.stop_reasons
    assert weight_epoch(resumed) == 2


def test_new_patience_on_resume_wins_over_the_stored_one():
    # After 4 epochs with patience 5: best at 2, wait = 2 (epochs 3, 4).
    # Resumed with patience 3: epoch 5 makes wait 3 -> stop at 5 (patience 5 would stop at 7).
    cb = EarlyStopping(patience=5)
    drive([cb], ROWS[:4], FakeTrainer())
    assert cb.wait == 2
    state = roundtrip(CallbackList([cb]).state_dict())
    resumed = FakeTrainer()
    resumed.epoch = 4
    cb2 = EarlyStopping(patience=3)
    assert drive([cb2], ROWS[4:], resumed, state=state) == 5
    assert cb2.patience == 3
    uninterrupted = FakeTrainer()
    assert drive([EarlyStopping(patience=5)], ROWS, uninterrupted) == 7


def test_unknown_monitor_names_the_metrics():
    with pytest.raises(KeyError, match="val_los.*not among the metrics: .*val_loss"):
        drive([EarlyStopping(monitor="val_los")], ROWS, FakeTrainer())


def test_bad_settings():
    with pytest.raises(ConfigError, match="mode must be min, max or auto"):
        EarlyStopping(mode="up")
    with pytest.raises(ConfigError, match="patience"):
        EarlyStopping(patience=-1)


def test_a_new_monitor_on_resume_starts_afresh_instead_of_comparing_with_the_old_metric():
    # Watching val_error, the best is 0.01. Resumed watching val_loss (about 0.05 and falling): compared
    # with the stored 0.01 no epoch would improve, and patience 2 would stop at epoch 5.
    rows = epochs(val_error=[0.02, 0.01, 0.015, 0.02, 0.02, 0.02], val_loss=[0.09, 0.07, 0.06, 0.05, 0.04, 0.03])
    cb = EarlyStopping(monitor="val_error", patience=2)
    drive([cb], rows[:3], FakeTrainer())
    state = roundtrip(CallbackList([cb]).state_dict())
    resumed = FakeTrainer()
    resumed.epoch = 3
    cb2 = EarlyStopping(monitor="val_loss", patience=2)
    assert drive([cb2], rows[3:], resumed, state=state) is None
    assert (cb2.best_value, cb2.best_epoch) == (0.03, 6)
    # The same monitor continues: the stored best and the epochs waited carry over.
    cb3 = EarlyStopping(monitor="val_error", patience=2)
    cb3.load_state_dict(state["user:EarlyStopping"])
    assert (cb3.best_value, cb3.best_epoch, cb3.wait) == (0.01, 2, 1)


@pytest.mark.parametrize("settings, epochs_, expected", [
    (dict(criterion="up", strips=3), 19, ["UP_3 cannot stop a run of 19 epochs: it compares E_va at the ends of "
                                          "5-epoch strips, so its first possible stop is after epoch 20"]),
    (dict(criterion="up", strips=3), 20, []),
    (dict(criterion="pq", strip=4, start_epoch=5), 7, ["PQ_0.5 cannot stop a run of 7 epochs: it decides at the "
                                                       "ends of 4-epoch strips, so its first possible stop is after "
                                                       "epoch 8"]),
    (dict(criterion="gl"), 1, ["GL_5 cannot stop a run of 1 epoch, so its first possible stop is after epoch 2"]),
    (dict(criterion="gl"), 2, []),
    (dict(criterion="patience", patience=3), 3, ["early stopping with patience 3 cannot stop a run of 3 epochs, so "
                                                 "its first possible stop is after epoch 4"]),
    (dict(criterion="patience", patience=3, baseline=0.5), 3, []),  # the first epoch already counts
    # patience 0 still needs an epoch 1 to set the best value: it cannot stop before epoch 2
    (dict(criterion="patience", patience=0), 1, ["early stopping with patience 0 cannot stop a run of 1 epoch, so "
                                                 "its first possible stop is after epoch 2"]),
    (dict(criterion="patience", patience=0), 2, []),
    (dict(criterion="gl", monitor="val_accuracy", baseline=0.9), 9,
     ["early_stopping.monitor = 'val_accuracy' is not used by criterion 'gl' (it is read by criterion patience only)",
      "early_stopping.baseline = 0.9 is not used by criterion 'gl' (it is read by criterion patience only)"]),
    (dict(criterion="patience", alpha=2.0, strips=2), 30,
     ["early_stopping.alpha = 2.0 is not used by criterion 'patience' (it is read by criteria gl and pq only)",
      "early_stopping.strips = 2 is not used by criterion 'patience' (it is read by criterion up only)"]),
    (dict(criterion="none", monitor="val_accuracy"), 1, []),  # switched off: nothing to warn about
])
def test_early_stopping_warnings_name_what_will_not_act(settings, epochs_, expected):
    from mnistlab.callbacks.early_stopping import early_stopping_warnings
    from mnistlab.config import EarlyStoppingConfig

    assert early_stopping_warnings(EarlyStoppingConfig(**settings), epochs_) == expected
    # and the rule really cannot stop before the epoch the warning names: driven with rising E_va
    if expected and "first possible stop is after epoch" in expected[-1]:
        from mnistlab.callbacks import early_stopping_from_config
        first = int(expected[-1].rsplit(" ", 1)[1])
        rule = early_stopping_from_config(EarlyStoppingConfig(**settings))
        rising = [0.1 * (i + 1) for i in range(first + 1)]
        assert drive([rule], epochs(val_loss=rising, train_loss=[1.0] * len(rising)), FakeTrainer()) == first
