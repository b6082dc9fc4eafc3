"""TimeLimit (train.max_minutes): driven with metrics dicts, then in real runs with a resume."""

from __future__ import annotations

import json
import logging

import pytest

from mnistlab import Config, apply_overrides
from mnistlab.callbacks import CallbackList, TimeLimit, build_callbacks
from mnistlab.errors import ConfigError

from fake_trainer import FakeTrainer, drive, epochs, roundtrip


def test_it_stops_when_the_next_epoch_could_end_past_the_limit():
    trainer = FakeTrainer()
    stopped = drive([TimeLimit(1.0)], epochs(seconds=[10.0, 12.0, 11.0, 10.0, 9.0, 10.0]), trainer)  # 60 s
    # after epoch 4: 43 s used + the longest epoch (12 s) = 55 s fits; after epoch 5: 52 + 12 = 64 s does not
    assert stopped == 5 and trainer.stopped_by == "time_limit"
    assert trainer.stop_reasons == ["time limit of 1 min: 52.0 s of training used after epoch 5, "
                                    "and an epoch takes up to 12.0 s"]


def test_the_first_epoch_always_runs_and_a_long_one_stops_at_once():
    trainer = FakeTrainer()
    assert drive([TimeLimit(0.5)], epochs(seconds=[100.0, 1.0]), trainer) == 1
    assert "1.7 min of training used after epoch 1, and an epoch takes up to 1.7 min" in trainer.stop_reasons[0]


def test_its_count_survives_a_resume_and_a_larger_limit_trains_on():
    first = CallbackList([TimeLimit(1.0)])
    trainer = FakeTrainer()
    assert drive(first.callbacks, epochs(seconds=[25.0] * 3), trainer) == 2  # 50 + 25 s would pass 60
    state = roundtrip(first.state_dict())  # through a checkpoint
    resumed = FakeTrainer()
    resumed.epoch = 2
    # the user's new limit wins; the count is the run's: 50 s before, then 25 s epochs while they fit in 2 min
    assert drive([TimeLimit(2.0)], epochs(seconds=[25.0] * 5), resumed, state=state) == 4
    assert "1.7 min of training used after epoch 4" in resumed.stop_reasons[0]  # 100 s


def test_a_run_resumed_with_a_limit_it_did_not_have_counts_its_earlier_epochs():
    # No state of its own to load (the first part ran without a limit): it counted from 0 and trained on
    # past the limit by the time of the earlier epochs.
    resumed = FakeTrainer()
    resumed.epoch = 2
    resumed.history = [{"epoch": 1, "seconds": 25.0}, {"epoch": 2, "seconds": 30.0}]
    assert drive([TimeLimit(1.5)], epochs(seconds=[25.0] * 5), resumed, state={}) == 3  # 55 + 25 + 30 > 90
    assert "1.3 min of training used after epoch 3, and an epoch takes up to 30.0 s" in resumed.stop_reasons[0]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "20"])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ConfigError, match="max_minutes must be"):
        TimeLimit(bad)


def test_the_config_builds_it():
    assert not any(isinstance(cb, TimeLimit) for cb in build_callbacks(Config(), None))
    cbs = build_callbacks(apply_overrides(Config(), ["train.max_minutes=20"]), None)
    limits = [(cb.max_minutes, cb.schedule) for cb in cbs if isinstance(cb, TimeLimit)]
    assert limits == [(20.0, "onecycle")]
    with pytest.raises(ConfigError, match="train.max_minutes must be greater than zero"):
        apply_overrides(Config(), ["train.max_minutes=0"])


def test_a_real_run_stops_on_time_and_a_resume_with_more_time_trains_on(mnist_root, tmp_path, no_report):
    from mnistlab import train

    # One thread: lenet5 gains nothing from a second, whose waiting on a busy 2-core machine cost more CPU time
    # than the training (28 s for the three runs, against 5 s with one thread and these 1,000 images)
    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=1000", "data.val_size=500",
                                     "model.name=lenet5", "train.epochs=4", "train.progress=false", "train.threads=1",
                                     "tensorboard.enabled=false", "train.max_minutes=1e-6"])  # less than any epoch
    run = tmp_path / "run"
    s = train(cfg, out=run, quiet=True).summary
    assert (s["epochs"], s["stopped_by"]) == (1, "time_limit")
    assert s["stop_reason"].startswith("time limit of 1e-06 min: ") and "after epoch 1" in s["stop_reason"]
    assert json.loads((run / "summary.json").read_text())["stopped_by"] == "time_limit"

    # resumed as it was: nothing more to train; with a limit that fits the rest: all 4 epochs
    assert train(cfg, resume=run, quiet=True).summary["epochs"] == 1
    more = apply_overrides(cfg, ["train.max_minutes=60"])
    s = train(more, resume=run, quiet=True).summary
    assert (s["epochs"], s["stopped_by"]) == (4, "max_epochs")


def test_it_warns_after_epoch_1_when_a_decaying_schedule_will_be_cut_short(caplog):
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        drive([TimeLimit(20, schedule="onecycle")], epochs(seconds=[126.0, 126.0]), FakeTrainer(planned_epochs=32))
    assert caplog.messages == [
        "time limit: at 2.1 min an epoch, about 9 of the 32 epochs fit in 20 min, but the onecycle schedule is "
        "planned over all 32: training will stop while its rate is still high (--epochs 9 would end it in time)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        drive([TimeLimit(20, schedule="constant")], epochs(seconds=[126.0]), FakeTrainer(planned_epochs=32))
        drive([TimeLimit(20, schedule="cosine")], epochs(seconds=[126.0]), FakeTrainer(planned_epochs=8))  # 8 fit
        # 60 x 1e308 minutes is inf seconds, and inf // 126 was NaN: int() of it raised after epoch 1
        assert drive([TimeLimit(1e308, schedule="cosine")], epochs(seconds=[126.0] * 3),
                     FakeTrainer(planned_epochs=3)) is None
    assert caplog.messages == []


def test_a_run_that_ends_with_its_last_epoch_was_not_stopped_by_the_limit():
    # The limit would stop after epoch 2 (the next epoch cannot fit), but there is no next epoch.
    trainer = FakeTrainer(planned_epochs=2)
    assert drive([TimeLimit(1.0)], epochs(seconds=[25.0, 25.0]), trainer) is None
    assert trainer.stop_reasons == [] and trainer.stopped_by is None
    assert drive([TimeLimit(1.0)], epochs(seconds=[25.0, 25.0]), FakeTrainer(planned_epochs=3)) == 2
