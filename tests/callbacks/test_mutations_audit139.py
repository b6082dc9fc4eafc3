"""Tests that kill the mutants of the stopping rules, ReduceLROnPlateau and the schedules that the other tests let
live (audit 139, hand-made mutation testing). Each test names the mistake it catches and the definition it holds
the code to: Prechelt (1998) "Early stopping - but when?", Keras' EarlyStopping and ReduceLROnPlateau, PyTorch's
schedulers."""

import math

import pytest

from fake_trainer import FakeTrainer, drive, epochs, weight_epoch
from mnistlab.callbacks import GL, PQ, EarlyStopping, ReduceLROnPlateau
from mnistlab.config import ScheduleConfig
from mnistlab.training.schedules import lr_at, max_steps_warnings, schedule_warnings, warmup_steps


# ---- EarlyStopping (Keras) -------------------------------------------------------------------------------------


def test_a_value_equal_to_the_baseline_does_not_beat_it():
    # Keras restarts the count only on a value that improves on the baseline (strictly, by more than min_delta).
    # 0.5 at a baseline of 0.5: epoch 1 is the best but counts as waited, epoch 2 makes 2 -> stop at 2.
    # Mutant killed: a tie with the baseline restarting the count (stop at 3).
    trainer = FakeTrainer()
    assert drive([EarlyStopping(patience=2, baseline=0.5)], epochs(val_loss=[0.5, 0.5, 0.5]), trainer) == 2
    assert "did not beat the baseline 0.5 in 2 epochs" in trainer.stop_reasons[0]
    # Just below the baseline beats it: the count restarts at epoch 1, and stops 2 epochs later.
    assert drive([EarlyStopping(patience=2, baseline=0.5)], epochs(val_loss=[0.49, 0.5, 0.5]), FakeTrainer()) == 3


def test_an_infinite_value_stops_at_once_as_a_nan_does():
    # The docstring: stop_on_nonfinite stops "when the value is NaN or infinite". Mutant killed: only NaN checked.
    trainer = FakeTrainer()
    assert drive([EarlyStopping(patience=10)], epochs(val_loss=[1.0, math.inf, 0.5]), trainer) == 2
    assert trainer.stop_reasons == ["early stopping: val_loss is inf at epoch 2"]


# ---- Prechelt's GL, PQ ----------------------------------------------------------------------------------------


def test_e_opt_and_gl_include_the_epoch_itself():
    # E_opt(t) = min over t' <= t, so GL(t) = 0 (not negative) at an epoch that sets a new minimum.
    # Mutant killed: E_opt over t' < t (stops the same, but GL and E_opt are public and were wrong).
    cb = GL(alpha=50)
    drive([cb], epochs(val_loss=[0.8, 0.5, 0.6]), FakeTrainer())
    assert [cb.e_opt(t) for t in (1, 2, 3)] == [0.8, 0.5, 0.5]
    assert [cb.generalization_loss(t) for t in (1, 2)] == [0.0, 0.0]
    assert cb.generalization_loss(3) == pytest.approx(20.0)


def test_gl_is_infinite_above_a_best_error_of_zero():
    # The module docstring: E_opt = 0 gives GL = inf when E_va > 0 (a 0 % validation error, then any error),
    # and GL = 0 while E_va stays 0. Mutant killed: GL = 0 whenever E_opt = 0 (the rule never stops).
    assert drive([GL(alpha=5, error="error")], epochs(val_error=[0.1, 0.0, 0.0]), FakeTrainer()) is None
    trainer = FakeTrainer()
    assert drive([GL(alpha=5, error="error")], epochs(val_error=[0.1, 0.0, 0.01]), trainer) == 3
    assert trainer.stop_reasons[0].startswith("early stopping: GL=inf > 5")


def test_pq_equal_to_alpha_does_not_stop():
    # Prechelt stops at the first strip end with PQ > alpha. Strip 2: E_tr (2, 1) gives P_2 = 1000 * (3 / 2 - 1)
    # = 500; E_va (1, 1.5) gives GL = 50; PQ = 0.1 exactly. Mutant killed: PQ >= alpha.
    rows = epochs(val_loss=[1.0, 1.5], train_loss=[2.0, 1.0])
    assert drive([PQ(alpha=0.1, strip=2)], rows, FakeTrainer()) is None
    assert drive([PQ(alpha=0.09, strip=2)], rows, FakeTrainer()) == 2


def test_pq_with_one_epoch_strips_stops_only_above_the_best():
    # P_1 = 0 always, so PQ is infinite where GL > 0 and 0 where GL = 0 (what early_stopping_warnings says:
    # "stops at the first epoch whose validation error is above its best"). A falling E_va never stops.
    # Mutants killed: PQ = inf at GL = 0 (stopped at epoch 1 of any run).
    trainer = FakeTrainer()
    assert drive([PQ(alpha=0.5, strip=1)], epochs(val_loss=[1.0, 0.9, 0.8, 0.85]), trainer) == 4
    assert drive([PQ(alpha=0.5, strip=1)], epochs(val_loss=[1.0, 0.9, 0.9]), FakeTrainer()) is None


def test_pq_with_a_training_error_of_zero_in_the_strip():
    # The module docstring: a strip whose minimum E_tr is 0 has infinite progress (PQ = 0, no stop) unless the
    # whole strip is 0, where P_k = 0 and any GL > 0 stops. Mutant killed: the two cases swapped.
    rising = [0.05, 0.1]  # GL(2) = 100
    cb = PQ(alpha=0.5, strip=2, error="error")
    assert drive([cb], epochs(val_error=rising, train_error=[0.02, 0.0]), FakeTrainer()) is None
    assert cb.training_progress(2) == math.inf
    cb = PQ(alpha=0.5, strip=2, error="error")
    assert drive([cb], epochs(val_error=rising, train_error=[0.0, 0.0]), FakeTrainer()) == 2
    assert cb.training_progress(2) == 0.0


def test_prechelt_best_epoch_counts_epochs_before_start_epoch():
    # PrecheltStopping: "start_epoch: no stop before it (values before it still count)", and the best epoch is the
    # first with the lowest E_va. Epoch 1 (0.5) stays the best: GL is 40 and 20 at epochs 4, 5 (E_opt 0.5), no
    # stop, and its weights come back. Mutant killed: best value only tracked from start_epoch (restored epoch 5).
    trainer = FakeTrainer()
    cb = GL(alpha=50, start_epoch=4, restore_best_weights=True)
    assert drive([cb], epochs(val_loss=[0.5, 1.0, 0.9, 0.7, 0.6]), trainer) is None
    assert cb.best_epoch == 1 and cb.restored_epoch == 1 and weight_epoch(trainer) == 1


def test_a_negative_min_delta_means_its_size_as_in_keras():
    # Keras takes abs(min_delta): -0.1 asks, as 0.1 does, for values below best - 0.1 (a stop at 4, see
    # test_patience_with_min_delta). Mutant killed: the sign kept (every epoch improved, no stop).
    rows = epochs(val_loss=[1.0, 0.8, 0.75, 0.72, 0.69])
    assert drive([EarlyStopping(patience=2, min_delta=-0.1)], rows, FakeTrainer()) == 4


def test_max_mode_asks_for_a_rise_of_more_than_min_delta():
    # Keras in max mode: an improvement is current - min_delta > best. 0.905 and 0.908 are not above 0.9 + 0.01.
    # Mutant killed: best - min_delta in max mode (any value above 0.89 improved).
    cb = EarlyStopping(monitor="val_accuracy", patience=2, min_delta=0.01)
    assert drive([cb], epochs(val_accuracy=[0.9, 0.905, 0.908]), FakeTrainer()) == 3
    plateau = ReduceLROnPlateau(monitor="val_accuracy", patience=1, threshold=0.01, threshold_mode="abs")
    drive([plateau], epochs(val_accuracy=[0.9, 0.905]), FakeTrainer())
    assert [c["epoch"] for c in plateau.changes] == [2]


# ---- ReduceLROnPlateau ----------------------------------------------------------------------------------------


def test_the_rate_is_never_raised_to_min_lr():
    # A decaying schedule may take the rate below min_lr (the docstring); a reduction must then change nothing, as
    # Keras (reduces only while old_lr > min_lr) and PyTorch (max(old * factor, min_lr) only if smaller) do.
    # Mutant killed: |old - new| > eps (the "reduction" raised 1e-5 to 1e-4).
    trainer = FakeTrainer(lr=1e-5)
    cb = ReduceLROnPlateau(patience=1, min_lr=1e-4)
    drive([cb], epochs(val_loss=[1.0, 1.0, 1.0]), trainer)
    assert trainer.lrs_set == [] and cb.changes == [] and trainer.lr == 1e-5


def test_the_best_value_still_updates_in_cooldown():
    # The docstring (PyTorch's semantics): cooldown epochs are not counted, but the best value still updates.
    # patience 1, cooldown 2: t=2 reduce; t=3 (cooldown) 0.5 is the new best; t=4 (cooldown) 0.6; t=5 0.6 is no
    # improvement on 0.5 -> reduce at 5. Mutant killed: the best frozen in cooldown (0.6 at t=5 "improved" on 1.0).
    cb = ReduceLROnPlateau(patience=1, cooldown=2, threshold=0)
    drive([cb], epochs(val_loss=[1.0, 1.0, 0.5, 0.6, 0.6]), FakeTrainer())
    assert [c["epoch"] for c in cb.changes] == [2, 5]
    assert cb.best == 0.5


def test_a_relative_threshold_is_relative_to_the_size_of_a_negative_best():
    # MonitorMixin: rel improves below best - |best| * threshold. A metric of -1.0 then -0.95 (worse, in min mode)
    # is no improvement. Mutant killed: best * threshold without abs (PyTorch's best * (1 - threshold): -0.95 is
    # below -0.9 and counted as one).
    cb = ReduceLROnPlateau(monitor="score", mode="min", patience=1, threshold=0.1, threshold_mode="rel")
    drive([cb], epochs(score=[-1.0, -0.95]), FakeTrainer())
    assert [c["epoch"] for c in cb.changes] == [2]


def test_from_config_passes_every_setting():
    # Mutants killed: from_config dropping cooldown or threshold_mode (the class defaults acted, silently).
    from mnistlab.config import ReduceLROnPlateauConfig

    cfg = ReduceLROnPlateauConfig(monitor="val_accuracy", mode="max", factor=0.5, patience=3, threshold=0.02,
                                  threshold_mode="abs", cooldown=2, min_lr=1e-5)
    cb = ReduceLROnPlateau.from_config(cfg)
    assert (cb.monitor, cb.mode, cb.factor, cb.patience, cb.min_delta, cb.threshold_mode, cb.cooldown, cb.min_lr) == (
        "val_accuracy", "max", 0.5, 3, 0.02, "abs", 2, 1e-5)


# ---- schedules ------------------------------------------------------------------------------------------------


def test_the_warm_up_is_rounded_to_the_nearest_step():
    # warmup_steps' docstring: warmup_epochs of steps_per_epoch, rounded. 0.37 x 10 = 3.7 -> 4 steps of warm-up.
    # Mutant killed: truncated to 3.
    cfg = ScheduleConfig(name="constant", warmup_epochs=0.37)
    assert warmup_steps(cfg, 10) == 4
    rates = [lr_at(s, total_steps=10, steps_per_epoch=10, base_lr=0.1, cfg=cfg) for s in range(5)]
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


@pytest.mark.parametrize("name, end", [("cosine", 0.001), ("onecycle", 0.1 / 25 / 1e4)])
def test_the_rate_past_the_last_step_stays_at_the_end(name, end):
    # The trainer's lr is the rate of the next step: after the last step that is lr_at(total_steps), which
    # ReduceLROnPlateau reads at the last epoch's end. It must be the end rate, not a cosine turning back up.
    # Mutant killed: the interpolation fraction not clamped to [0, 1].
    cfg = ScheduleConfig(name=name, min_lr=0.001, div_factor=25.0, final_div_factor=1e4)
    for step in (100, 101, 150):
        assert lr_at(step, total_steps=100, steps_per_epoch=10, base_lr=0.1, cfg=cfg) == pytest.approx(end)


def test_max_steps_warnings_say_nothing_schedule_warnings_said_and_miss_nothing_they_did_not():
    # max_steps_warnings: what a max_steps cut does not reach "where epochs alone would" (schedule_warnings has
    # said what they do not). Mutants killed: each line below, with the boundary moved by one.
    # A milestone at the last epoch is never reached by the epochs either: not said again.
    multi = ScheduleConfig(name="multistep", milestones=(1, 4))
    assert max_steps_warnings(multi, epochs=4, max_steps=25, steps_per_epoch=10) == []
    # A warm-up as long as the run reaches optimizer.lr at its last step (schedule_warnings is silent): a cut at
    # step 5 of its 20 must be said.
    const = ScheduleConfig(name="constant", warmup_epochs=2.0)
    assert schedule_warnings(const, epochs=2) == []
    assert max_steps_warnings(const, epochs=2, max_steps=5, steps_per_epoch=10) == [
        "schedule.warmup_epochs = 2 is 20 steps, more than train.max_steps = 5: the run ends in the warm-up, its "
        "rate rising to only about 25% of optimizer.lr"]
    # A cosine warm-up as long as the run: schedule_warnings said it leaves no decay; not said twice.
    cosine = ScheduleConfig(name="cosine", warmup_epochs=2.0)
    assert len(schedule_warnings(cosine, epochs=2)) == 1
    assert max_steps_warnings(cosine, epochs=2, max_steps=5, steps_per_epoch=10) == []


def test_the_step_schedules_count_the_epochs_they_are_given():
    # lr_at's epoch: the epochs done (fit passes its own count, which a max_steps cut and resume put ahead of
    # step // steps_per_epoch). Mutant killed: multistep recomputing the epoch from the step.
    multi = ScheduleConfig(name="multistep", milestones=(1, 3), gamma=0.5)
    step = ScheduleConfig(name="step", step_epochs=1, gamma=0.5)
    for cfg in (multi, step):
        assert lr_at(5, total_steps=100, steps_per_epoch=10, base_lr=0.1, cfg=cfg) == 0.1  # epoch 0 from the step
        assert lr_at(5, total_steps=100, steps_per_epoch=10, base_lr=0.1, cfg=cfg, epoch=1) == pytest.approx(0.05)


def test_a_warm_up_one_cycle_ignores_is_not_said_to_be_cut_by_max_steps():
    # One-cycle reads no warmup_epochs (schedule_warnings says so): a max_steps cut cannot end "its warm-up".
    # Mutant killed: max_steps_warnings treating onecycle like the others.
    cfg = ScheduleConfig(name="onecycle", warmup_epochs=1.0)
    assert max_steps_warnings(cfg, epochs=5, max_steps=30, steps_per_epoch=100) == []


# ---- a callback used for a second run --------------------------------------------------------------------------


def test_early_stopping_starts_afresh_in_a_second_run():
    # Stateful callbacks reset at the start of training (Keras' on_train_begin): the same instance given to a second
    # fit decides as a new one. Mutant killed: no reset (the first run's best 0.1 stopped the second at epoch 2).
    cb = EarlyStopping(patience=2)
    assert drive([cb], epochs(val_loss=[0.1, 0.2, 0.3]), FakeTrainer()) == 3
    assert drive([cb], epochs(val_loss=[1.0, 0.9, 0.8, 0.7]), FakeTrainer()) is None
    assert cb.best_value == 0.7 and cb.best_epoch == 4 and cb.stopped_epoch is None


def test_reduce_lr_on_plateau_starts_afresh_in_a_second_run():
    # As above: the second run's count, best and changes are its own. Mutant killed: no reset at on_train_begin.
    cb = ReduceLROnPlateau(patience=1, threshold=0)
    drive([cb], epochs(val_loss=[0.1, 0.2]), FakeTrainer(lr=0.1))
    assert [c["epoch"] for c in cb.changes] == [2]
    trainer = FakeTrainer(lr=0.1)
    drive([cb], epochs(val_loss=[1.0, 0.9]), trainer)
    assert cb.changes == [] and trainer.lrs_set == [] and cb.best == 0.9


def test_the_divergence_threshold_is_not_moved_by_min_delta():
    # The docstring: stop at once when the value is worse than divergence_threshold; min_delta is about what counts
    # as an improvement, not about this. 9.8 is below 10 -> no stop. Mutant killed: value + min_delta compared.
    cb = EarlyStopping(patience=5, min_delta=0.5, divergence_threshold=10.0)
    assert drive([cb], epochs(val_loss=[1.0, 9.8]), FakeTrainer()) is None
    trainer = FakeTrainer()
    assert drive([EarlyStopping(patience=5, divergence_threshold=10.0)], epochs(val_loss=[1.0, 10.5]), trainer) == 2


# ---- early_stopping_warnings and --early-stopping -------------------------------------------------------------


def test_pq_can_stop_at_a_start_epoch_that_ends_a_strip():
    # PQ decides at the strip ends t >= start_epoch: with k = 5 and start_epoch 10, epoch 10 itself. A run of 10
    # epochs can stop (no warning), one of 9 cannot. Mutant killed: the first strip end counted after start_epoch.
    from mnistlab.callbacks.early_stopping import early_stopping_warnings
    from mnistlab.config import EarlyStoppingConfig

    cfg = EarlyStoppingConfig(criterion="pq", strip=5, start_epoch=10)
    assert early_stopping_warnings(cfg, epochs=10) == []
    assert early_stopping_warnings(cfg, epochs=9) == [
        "PQ_0.5 cannot stop a run of 9 epochs: it decides at the ends of 5-epoch strips, so its first possible stop "
        "is after epoch 10"]
    # and it does stop there: GL(10) = 100 * (0.6 / 0.5 - 1) = 20, P_5 = 1000 * (5.5 / 5 - 1) = 100, PQ = 0.2
    rows = epochs(val_loss=[0.5] * 9 + [0.6], train_loss=[1.0] * 9 + [1.5])
    assert drive([PQ(alpha=0.1, strip=5, start_epoch=10)], rows, FakeTrainer()) == 10


def test_up_with_zero_strips_is_refused_by_the_option_itself():
    # UP_s needs s >= 1: "--early-stopping up:0" is refused with the option's own message. Mutant killed: the
    # check of the number allowing 0.
    from mnistlab.callbacks.early_stopping import parse_early_stopping
    from mnistlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--early-stopping 'up:0': the strips must be 1 or more"):
        parse_early_stopping("up:0")
    assert parse_early_stopping("up:1") == {"early_stopping.criterion": "up", "early_stopping.strips": 1}
