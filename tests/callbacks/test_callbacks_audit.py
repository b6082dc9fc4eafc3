"""Found in an audit of the callbacks and the range test: the time limit and train.max_steps, its warning about a
schedule cut short, and a range test whose first loss is not finite."""

from __future__ import annotations

import logging

import pytest

from mnistlab import Config, apply_overrides
from mnistlab.callbacks import Callback, TimeLimit

from fake_trainer import FakeTrainer, drive, epochs

# The trainer's planned_epochs is where train.epochs or train.max_steps end the run (the real runs below check it).


def test_the_limit_does_not_claim_the_stop_of_a_run_that_max_steps_ends():
    # After epoch 2 the next epoch would not fit (50 + 25 s > 60 s), but train.max_steps ends the run there anyway:
    # summary.json said stopped_by "time_limit" where "max_steps" ended it.
    trainer = FakeTrainer(planned_epochs=2)  # train.epochs = 5, max_steps reached in epoch 2
    assert drive([TimeLimit(1.0)], epochs(seconds=[25.0, 25.0]), trainer) is None
    assert trainer.stop_reasons == [] and trainer.stopped_by is None
    assert drive([TimeLimit(1.0)], epochs(seconds=[25.0, 25.0]), FakeTrainer(planned_epochs=3)) == 2


class _Planned(Callback):
    """Records the trainer's planned_epochs as a user's callback sees it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def on_train_begin(self, trainer) -> None:
        self.seen.append(("begin", trainer.planned_epochs))

    def on_epoch_end(self, epoch, metrics, trainer) -> None:
        self.seen.append((f"epoch {epoch}", trainer.planned_epochs))


def test_a_real_run_ended_by_max_steps_says_so_under_a_limit(mnist_root, tmp_path, no_report):
    from mnistlab import train

    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100",
                                     "model.name=cnn", "model.width=0.25", "train.batch_size=64", "train.epochs=3",
                                     "train.max_steps=5", "train.max_minutes=1e-7", "train.threads=1",
                                     "train.progress=false", "tensorboard.enabled=false", "train.report=false"])
    planned = _Planned()
    s = train(cfg, out=tmp_path / "run", quiet=True, callbacks=[planned]).summary  # 5 batches an epoch
    assert (s["epochs"], s["stopped_by"], s["stop_reason"]) == (1, "max_steps", "max steps reached (5)")
    assert planned.seen == [("begin", 1), ("epoch 1", 1)]  # max_steps end epoch 1: the run's last
    # Resumed with more steps (7: two into epoch 2) and epochs: the plan is the resumed run's.
    planned = _Planned()
    more = apply_overrides(cfg, ["train.max_steps=7", "train.epochs=4", "train.max_minutes=60"])
    s = train(more, resume=tmp_path / "run", quiet=True, callbacks=[planned]).summary
    assert (s["epochs"], s["stopped_by"]) == (2, "max_steps") and planned.seen == [("begin", 2), ("epoch 2", 2)]


def test_no_warning_of_a_schedule_cut_short_in_a_run_of_one_epoch(caplog):
    # The first epoch always runs, and it is the last: it warned "about 1 of the 1 epochs fit in 1 min, but the
    # onecycle schedule is planned over all 1: training will stop while its rate is still high (--epochs 1 ...)"
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        drive([TimeLimit(1.0, schedule="onecycle")], epochs(seconds=[126.0]), FakeTrainer(planned_epochs=1))
    assert caplog.messages == []


def test_the_warning_of_a_schedule_cut_short_counts_the_epochs_max_steps_plans(caplog):
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        # max_steps ends the run inside epoch 1, before the limit could
        drive([TimeLimit(1.0, schedule="cosine")], epochs(seconds=[126.0]), FakeTrainer(planned_epochs=1))
    assert caplog.messages == []
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        # The schedule spans the epochs max_steps plan (12), not all 32 of train.epochs: 9 of those 12 fit.
        drive([TimeLimit(20, schedule="onecycle")], epochs(seconds=[126.0]), FakeTrainer(planned_epochs=12))
        drive([TimeLimit(1.0, schedule="onecycle")], epochs(seconds=[126.0]), FakeTrainer(planned_epochs=2))
    assert caplog.messages == [
        "time limit: at 2.1 min an epoch, about 9 of the 12 epochs fit in 20 min, but the onecycle schedule is "
        "planned over all 12: training will stop while its rate is still high (--epochs 9 would end it in time)",
        "time limit: at 2.1 min an epoch, about 1 of the 2 epochs fit in 1 min, but the onecycle schedule is "
        "planned over all 2: training will stop while its rate is still high (--epochs 1 would end it in time)",
    ]


def test_a_range_test_whose_first_loss_is_not_finite_reports_it(mnist_small):
    # The loss of step 1 overflows (weights of 1e38 times 64 images): fit() ended before any step was recorded,
    # and the suggestion took np.argmin of no losses, a ValueError in place of the stop reason.
    from mnistlab.training.lr_find import lr_range_test, steepest_descent

    assert steepest_descent([], []) is None
    cfg = apply_overrides(Config(), ["model.name=cnn", "model.width=0.25", "train.batch_size=64",
                                     "train.precision=fp32", "train.threads=1", "train.progress=false",
                                     f"train.class_weights=[{', '.join(['1e38'] * 10)}]"])
    r = lr_range_test(cfg, data=mnist_small, min_lr=1e-5, max_lr=1e-1, steps=30)
    assert (r.lrs, r.losses, r.smoothed, r.suggestion, r.lowest) == ([], [], [], None, None)
    assert r.stop_reason == "the loss was not finite at lr 1.00e-05 (step 1)"


@pytest.mark.parametrize("limit, expected", [(1e308, None), (0.5, 1)])
def test_huge_and_tiny_limits_still_decide(limit, expected):
    # min(fits, planned) keeps int() away from an infinite count of epochs (60 x 1e308 minutes is inf seconds)
    trainer = FakeTrainer(planned_epochs=3)
    assert drive([TimeLimit(limit, schedule="cosine")], epochs(seconds=[60.0] * 3), trainer) == expected
