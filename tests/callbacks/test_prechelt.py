"""Prechelt's GL, PQ and UP on literal sequences, with the arithmetic worked out by hand.

Definitions (Prechelt 1998): E_opt(t) = min E_va(t' <= t);
GL(t) = 100 (E_va(t)/E_opt(t) - 1); P_k(t) = 1000 (sum E_tr(strip) / (k min E_tr(strip)) - 1);
strips end at t = k, 2k, ...; UP_s: E_va rose over s successive strips.
"""

import pytest

from fake_trainer import FakeTrainer, drive, epochs, roundtrip, weight_epoch
from mnistlab.callbacks import GL, PQ, UP, CallbackList
from mnistlab.errors import ConfigError


# ---- GL ----------------------------------------------------------------------------

GL_VAL = [0.8, 0.5, 0.51, 0.52, 0.5, 0.53, 0.55, 0.4]
# t=1: E_opt=0.8, GL=0          t=2: E_opt=0.5 (best epoch 2), GL=0
# t=3: 100*(0.51/0.5-1) = 2     t=4: 100*(0.52/0.5-1) = 4
# t=5: 0.5 ties E_opt (best stays epoch 2), GL = 0
# t=6: 100*(0.53/0.5-1) = 6 > 5  -> stop at epoch 6


def test_gl_stops_at_first_epoch_above_alpha(trainer):
    cb = GL(alpha=5)
    assert drive([cb], epochs(val_loss=GL_VAL), trainer) == 6
    assert trainer.stop_reasons == ["early stopping: GL=6.00 > 5 (val_loss 0.53, best 0.5) at epoch 6"]
    assert cb.best_epoch == 2 and cb.stopped_epoch == 6


def test_gl_equal_to_alpha_does_not_stop():
    # E_opt = 0.5; t=2: 100*(0.5625/0.5 - 1) = 12.5 exactly (binary fractions), not > 12.5;
    # t=3: 100*(0.625/0.5 - 1) = 25 > 12.5 -> stop at 3.
    assert drive([GL(alpha=12.5)], epochs(val_loss=[0.5, 0.5625, 0.625]), FakeTrainer()) == 3


def test_gl_on_classification_error():
    # error="error": E_va = 1 - val_accuracy = [0.10, 0.05, 0.052, 0.06]
    # t=3: 100*(0.052/0.05-1) = 4 <= 5;  t=4: 100*(0.06/0.05-1) = 20 > 5 -> stop at 4.
    # val_loss falls all along, so error="loss" never stops.
    rows = epochs(val_accuracy=[0.90, 0.95, 0.948, 0.94], val_loss=[0.4, 0.3, 0.2, 0.1])
    assert drive([GL(alpha=5, error="error")], rows, FakeTrainer()) == 4
    assert drive([GL(alpha=5, error="loss")], rows, FakeTrainer()) is None


def test_gl_never_stops_while_validation_improves():
    assert drive([GL(alpha=0)], epochs(val_loss=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5]), FakeTrainer()) is None


def test_gl_respects_start_epoch():
    # Same sequence: GL(6)=6 > 5 but start_epoch=7; t=7: 100*(0.55/0.5-1) = 10 > 5 -> stop at 7.
    assert drive([GL(alpha=5, start_epoch=7)], epochs(val_loss=GL_VAL), FakeTrainer()) == 7


# ---- PQ ----------------------------------------------------------------------------

PQ_TRAIN = [1.0, 0.8, 0.6, 0.5, 0.4, 0.39, 0.385, 0.38, 0.38, 0.38]
PQ_VAL = [0.9, 0.7, 0.6, 0.62, 0.66, 0.61, 0.72, 0.65, 0.64, 0.63]
# k = 5, alpha = 0.5. E_opt = 0.6 from epoch 3 on.
# Strip end t=5:  E_tr 1.0..0.4: sum 3.3, min 0.4 -> P_5 = 1000*(3.3/(5*0.4) - 1) = 650
#                 GL(5) = 100*(0.66/0.6 - 1) = 10 -> PQ = 10/650 = 0.0154 <= 0.5
# t=7 is not a strip end: GL(7) = 100*(0.72/0.6-1) = 20 would stop GL_5, but PQ is not checked.
# Strip end t=10: E_tr 0.39, 0.385, 0.38, 0.38, 0.38: sum 1.915, min 0.38
#                 P_5 = 1000*(1.915/1.9 - 1) = 7.895; GL(10) = 100*(0.63/0.6 - 1) = 5
#                 PQ = 5/7.895 = 0.633 > 0.5 -> stop at epoch 10


def test_pq_stops_only_at_strip_ends(trainer):
    cb = PQ(alpha=0.5, strip=5)
    assert drive([cb], epochs(val_loss=PQ_VAL, train_loss=PQ_TRAIN), trainer) == 10
    assert cb.training_progress(5) == pytest.approx(650)
    assert cb.quotient(5) == pytest.approx(10 / 650)
    assert cb.training_progress(10) == pytest.approx(1000 * (1.915 / 1.9 - 1))
    assert cb.quotient(10) == pytest.approx(0.6333, abs=1e-4)
    assert trainer.stop_reasons == ["early stopping: PQ=GL/P_5=0.633 > 0.5 (GL=5.00, P_5=7.89) at epoch 10"]
    # GL_5 on the same sequence stops at the first epoch with GL > 5: t=5 (GL=10).
    assert drive([GL(alpha=5)], epochs(val_loss=PQ_VAL, train_loss=PQ_TRAIN), FakeTrainer()) == 5


def test_pq_ignores_a_spike_inside_a_strip():
    # E_va(9) = 0.9: GL(9) = 50, but 9 is no strip end; at t=10 E_va = 0.6 = E_opt -> GL = 0, PQ = 0.
    val = PQ_VAL[:8] + [0.9, 0.6]
    assert drive([PQ(alpha=0.5, strip=5)], epochs(val_loss=val, train_loss=PQ_TRAIN), FakeTrainer()) is None


def test_pq_with_short_strips():
    # k = 2, strip ends 2, 4. E_va = [1.0, 0.5, 0.55, 0.6]; E_opt = 0.5.
    # t=2: P_2 = 1000*((1.0+0.5)/(2*0.5) - 1) = 500, GL = 0 -> PQ = 0
    # t=4: E_tr 0.4, 0.4 -> P_2 = 1000*(0.8/0.8 - 1) = 0 (no progress) and GL = 20 > 0 -> PQ = inf -> stop at 4
    rows = epochs(val_loss=[1.0, 0.5, 0.55, 0.6], train_loss=[1.0, 0.5, 0.4, 0.4])
    assert drive([PQ(alpha=100, strip=2)], rows, FakeTrainer()) == 4


# ---- UP ----------------------------------------------------------------------------

UP_VAL = [1.0, 0.5, 0.3, 0.6, 0.2, 0.7, 0.65, 0.8]
# k = 2, s = 2: strip ends 2, 4, 6, 8 with E_va 0.5, 0.6, 0.7, 0.8.
# t=2: no E_va(0). t=4: 0.6 > 0.5 (UP_1) but UP_2 needs UP_1 at t=2, which needs E_va(0): no.
# t=6: 0.7 > 0.6 and UP_1 held at 4 -> UP_2 -> stop at 6.
# The odd epochs (0.3, 0.2) are not strip ends; the best epoch (lowest E_va) is 5.


def test_up_stops_after_s_rising_strips(trainer):
    cb = UP(strips=2, strip=2, restore_best_weights=True)
    assert drive([cb], epochs(val_loss=UP_VAL), trainer) == 6
    assert trainer.stop_reasons == [
        "early stopping: UP_2: val_loss rose over 2 successive 2-epoch strips (0.5@2, 0.6@4, 0.7@6) at epoch 6"
    ]
    assert cb.best_epoch == 5 and cb.restored_epoch == 5 and weight_epoch(trainer) == 5


def test_up_needs_successive_rises():
    # k = 2, s = 2; strip ends 2:0.5, 4:0.6, 6:0.55, 8:0.6, 10:0.7
    # t=6: 0.55 < 0.6 -> no. t=8: 0.6 > 0.55 but at 6 UP_1 failed -> no.
    # t=10: 0.7 > 0.6 and at 8 UP_1 held (0.6 > 0.55) -> stop at 10.
    val = [0.9, 0.5, 0.9, 0.6, 0.9, 0.55, 0.9, 0.6, 0.9, 0.7]
    assert drive([UP(strips=2, strip=2)], epochs(val_loss=val), FakeTrainer()) == 10


def test_up_defaults_first_possible_at_4k():
    # s = 3, k = 5: UP_3 needs E_va at t-15, so the earliest stop is epoch 20.
    # Strip ends 5:0.4, 10:0.5, 15:0.6, 20:0.7, each above the one before -> stop at 20 (not 15).
    val = [0.4 if e <= 5 else 0.5 if e <= 10 else 0.6 if e <= 15 else 0.7 for e in range(1, 26)]
    assert drive([UP()], epochs(val_loss=val), FakeTrainer()) == 20


def test_up_never_stops_when_validation_falls():
    assert drive([UP(strips=1, strip=1)], epochs(val_loss=[1.0, 0.9, 0.8, 0.8, 0.7]), FakeTrainer()) is None


# ---- shared behaviour --------------------------------------------------------------


def test_nonfinite_validation_error_stops():
    assert drive([GL(alpha=100)], epochs(val_loss=[1.0, float("nan"), 0.5]), FakeTrainer()) == 2
    assert drive([GL(alpha=100, stop_on_nonfinite=False)], epochs(val_loss=[1.0, float("nan"), 0.5]), FakeTrainer()) is None


def test_restore_best_weights_without_a_stop():
    # GL never exceeds 50 here, so training runs to the end; the weights of epoch 2 (E_va 0.5) come back.
    trainer = FakeTrainer()
    cb = GL(alpha=50, restore_best_weights=True)
    assert drive([cb], epochs(val_loss=[0.8, 0.5, 0.55, 0.6]), trainer) is None
    assert cb.restored_epoch == 2 and weight_epoch(trainer) == 2


CASES = [
    (lambda: GL(alpha=5, restore_best_weights=True), dict(val_loss=GL_VAL), 6),
    (lambda: PQ(alpha=0.5, strip=5, restore_best_weights=True), dict(val_loss=PQ_VAL, train_loss=PQ_TRAIN), 10),
    (lambda: UP(strips=2, strip=2, restore_best_weights=True), dict(val_loss=UP_VAL), 6),
]


# Every rule split at 1, 3 and 5; PQ also inside its deciding strip (epochs 6..10): split at 7 or 9, the
# E_tr of the epochs before the split must come back from the state for P_5(10) to be computed at all.
RESUME_SPLITS = [
    pytest.param(make, series, stop, split, id=f"{name}-{split}")
    for name, (make, series, stop) in zip(["GL", "PQ", "UP"], CASES)
    for split in ([1, 3, 5, 7, 9] if name == "PQ" else [1, 3, 5])
]


@pytest.mark.parametrize("make, series, stop, split", RESUME_SPLITS)
def test_resume_mid_sequence_decides_as_uninterrupted(make, series, stop, split):
    rows = epochs(**series)
    full = FakeTrainer()
    assert drive([make()], rows, full) == stop

    first = FakeTrainer()
    cb = make()
    assert drive([cb], rows[:split], first) is None
    state = roundtrip(CallbackList([cb]).state_dict())  # as a checkpoint stores it

    resumed = FakeTrainer()
    resumed.epoch = split
    cb2 = make()
    assert drive([cb2], rows[split:], resumed, state=state) == stop
    assert resumed.stop_reasons == full.stop_reasons
    assert cb2.restored_epoch == cb2.best_epoch and weight_epoch(resumed) == weight_epoch(full)


def test_a_new_strip_length_on_resume_wins():
    # Stored: UP(strips=1, strip=2), 4 epochs recorded. Resumed with strip=1:
    # UP_1 at every epoch: t=5: E_va 0.6 > E_va(4) 0.5 -> stop at 5 (strip=2 would wait for epoch 6).
    val = [1.0, 0.8, 0.6, 0.5, 0.6, 0.7]
    cb = UP(strips=1, strip=2)
    drive([cb], epochs(val_loss=val[:4]), FakeTrainer())
    resumed = FakeTrainer()
    resumed.epoch = 4
    assert drive([UP(strips=1, strip=1)], epochs(val_loss=val[4:]), resumed, state={"UP": cb.state_dict()}) == 5


def test_another_error_on_resume_starts_afresh():
    # Stored with error=error: E_va (val_error) 0.40 at epoch 2, its best. Resumed with error=loss, the val_loss
    # of epoch 3 (0.68) must not be compared with that val_error: GL would be 70% and stop the run.
    rows = epochs(val_loss=[1.9, 1.6, 0.68], val_error=[0.6, 0.4, 0.2])
    cb = GL(alpha=5, error="error")
    drive([cb], rows[:2], FakeTrainer())
    resumed = FakeTrainer()
    resumed.epoch = 2
    cb2 = GL(alpha=5, error="loss")
    assert drive([cb2], rows[2:], resumed, state=roundtrip({"GL": cb.state_dict()})) is None
    assert cb2.e_va == {3: 0.68} and cb2.best_epoch == 3
    # the same error keeps the stored values
    cb3 = GL(alpha=5, error="error")
    resumed = FakeTrainer()
    resumed.epoch = 2
    drive([cb3], rows[2:], resumed, state=roundtrip({"GL": cb.state_dict()}))
    assert cb3.e_va == {1: 0.6, 2: 0.4, 3: 0.2}


def test_bad_settings_are_config_errors():
    for make in (lambda: GL(alpha=-1), lambda: PQ(strip=0), lambda: UP(strips=0), lambda: GL(error="acc")):
        with pytest.raises(ConfigError):
            make()
