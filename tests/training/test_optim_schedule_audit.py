"""Schedule settings a run cannot act on are said when it starts: a step schedule whose first drop comes after
the last epoch, and a warm-up longer than the run (audit 105)."""

import pytest

from mnistlab.config import Config, ScheduleConfig, apply_overrides
from mnistlab.training.run import settings_warnings
from mnistlab.training.schedules import lr_at, schedule_warnings


def rates(cfg, epochs, per_epoch=10, base=0.1):
    total = epochs * per_epoch
    return [lr_at(s, total_steps=total, steps_per_epoch=per_epoch, base_lr=base, cfg=cfg) for s in range(total)]


def test_a_step_schedule_that_never_drops_in_the_run_is_warned_about():
    # step_epochs 5 in a 3-epoch run: the rate stayed at optimizer.lr throughout, without a word (a multistep
    # milestone past the run was already warned about).
    cfg = ScheduleConfig(name="step", step_epochs=5, gamma=0.5)
    assert set(rates(cfg, epochs=3)) == {0.1}
    assert schedule_warnings(cfg, epochs=3) == [
        "schedule.step_epochs: the rate first drops after epoch 5 only in a run resumed with more epochs than "
        "train.epochs = 3"]
    assert schedule_warnings(ScheduleConfig(name="step", step_epochs=3), epochs=3) != []  # drops after the last
    assert schedule_warnings(ScheduleConfig(name="step", step_epochs=2), epochs=3) == []
    assert schedule_warnings(ScheduleConfig(name="step", step_epochs=5)) == []  # epochs unknown: nothing to say
    # as a run starts (train and bench print settings_warnings)
    run = apply_overrides(Config(), ["schedule.name=step", "schedule.step_epochs=4", "train.epochs=4"])
    assert settings_warnings(run) == [
        "schedule.step_epochs: the rate first drops after epoch 4 only in a run resumed with more epochs than "
        "train.epochs = 4"]


@pytest.mark.parametrize("name", ["constant", "step", "cosine"])
def test_a_warm_up_longer_than_the_run_is_warned_about(name):
    # warmup_epochs 5 in a 2-epoch run: the last step trained at 40% of optimizer.lr, and a cosine schedule
    # never decayed, without a word.
    cfg = ScheduleConfig(name=name, warmup_epochs=5.0, step_epochs=5)
    out = rates(cfg, epochs=2)
    assert out[-1] == pytest.approx(0.04) and all(a < b for a, b in zip(out, out[1:]))
    tail = " and never decaying to schedule.min_lr" if name == "cosine" else ""
    assert f"schedule.warmup_epochs = 5 is longer than train.epochs = 2: the run ends in the warm-up, its rate " \
           f"rising to only about 40% of optimizer.lr{tail}" in schedule_warnings(cfg, epochs=2)
    assert not any("warmup" in w for w in schedule_warnings(cfg, epochs=5 if name != "cosine" else 6))


def test_a_cosine_warm_up_as_long_as_the_run_leaves_no_decay_and_is_warned_about():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2.0, min_lr=0.001)
    assert rates(cfg, epochs=2)[-1] == pytest.approx(0.1)  # min_lr never reached
    assert schedule_warnings(cfg, epochs=2) == [
        "schedule.warmup_epochs = 2 is all of train.epochs = 2: the cosine schedule has no steps left to decay to "
        "schedule.min_lr"]
    assert schedule_warnings(ScheduleConfig(name="constant", warmup_epochs=2.0), epochs=2) == []  # reaches lr
    assert schedule_warnings(ScheduleConfig(name="cosine", warmup_epochs=1.0), epochs=2) == []
    # one-cycle does not read the warm-up at all: that warning alone
    assert schedule_warnings(ScheduleConfig(name="onecycle", warmup_epochs=5.0), epochs=2) == [
        "schedule.warmup_epochs = 5.0 is not used by the onecycle schedule (it is read by constant, step, multistep "
        "and cosine only; one-cycle rises over its first pct_start of the steps)"]


def test_a_resume_that_moves_a_constant_schedules_warm_up_is_refused(mnist_root, tmp_path):
    # The warm-up counts steps: batch 64 -> 32 after one epoch of a 2-epoch warm-up put the rate back from
    # 0.005 to 0.00275 and had it climb again. Once past the warm-up of both epoch lengths, it resumes.
    from mnistlab.errors import ConfigError
    from mnistlab.training import train

    def small(*extra):
        return apply_overrides(Config(), [
            f"data.dir={mnist_root}", "data.train_limit=640", "data.val_size=100", "model.name=cnn", "model.width=0.25",
            "train.batch_size=64", "train.threads=1", "train.progress=false", "tensorboard.enabled=false",
            "train.epochs=1", "schedule.name=constant", "optimizer.lr=0.01", *extra])

    for warmup, refused in ((2, True), (0.5, False)):
        run = tmp_path / f"warmup-{warmup}"
        train(small(f"schedule.warmup_epochs={warmup}"), out=run, quiet=True, report=False)
        resumed = small(f"schedule.warmup_epochs={warmup}", "train.epochs=2", "train.batch_size=32")
        if refused:
            with pytest.raises(ConfigError, match=r"an epoch was 10 steps and would now be 20 \(train.batch_size was "
                                                  r"64, now 32\): the constant schedule's warm-up counts steps"):
                train(resumed, resume=run, quiet=True, report=False)
        else:  # 10 steps taken, past both the 5-step and the 10-step warm-up
            assert len(train(resumed, resume=run, quiet=True, report=False).fit.history) == 2
