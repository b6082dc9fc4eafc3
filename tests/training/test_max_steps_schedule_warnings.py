"""A run that train.max_steps ends says what of its schedule it does not reach: the end of the warm-up (the
rate stayed below optimizer.lr) and step or multistep drops, which the epochs alone would have reached."""

import pytest

from mnistlab import Config, apply_overrides, build_model, fit
from mnistlab.config import DataConfig, ScheduleConfig
from mnistlab.data import load_data
from mnistlab.training import train
from mnistlab.training.schedules import lr_at, max_steps_warnings


def test_a_warm_up_that_max_steps_cuts_is_warned_about():
    cfg = ScheduleConfig(name="constant", warmup_epochs=1.0)
    # 5 epochs of 100 steps, ended at step 40: the last rate is 40% of the base, as the warning says
    last = lr_at(39, total_steps=40, steps_per_epoch=100, base_lr=0.1, cfg=cfg)
    assert last == pytest.approx(0.04)
    assert max_steps_warnings(cfg, epochs=5, max_steps=40, steps_per_epoch=100) == [
        "schedule.warmup_epochs = 1 is 100 steps, more than train.max_steps = 40: the run ends in the warm-up, its "
        "rate rising to only about 40% of optimizer.lr"]
    assert max_steps_warnings(cfg, epochs=5, max_steps=100, steps_per_epoch=100) == []  # reaches the base rate
    assert max_steps_warnings(cfg, epochs=5, max_steps=None, steps_per_epoch=100) == []
    # longer than the epochs too: schedule_warnings says that already, once is enough
    assert max_steps_warnings(ScheduleConfig(name="constant", warmup_epochs=6.0), epochs=5, max_steps=40,
                              steps_per_epoch=100) == []
    # one-cycle has no warm-up of its own to cut, and fits its rise into the steps it takes
    assert max_steps_warnings(ScheduleConfig(name="onecycle"), epochs=5, max_steps=3, steps_per_epoch=100) == []


def test_a_cosine_warm_up_that_fills_max_steps_leaves_no_decay():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=0.5, min_lr=0.001)
    rates = [lr_at(s, total_steps=50, steps_per_epoch=100, base_lr=0.1, cfg=cfg) for s in range(50)]
    assert rates[-1] == pytest.approx(0.1)  # min_lr never reached
    assert max_steps_warnings(cfg, epochs=3, max_steps=50, steps_per_epoch=100) == [
        "schedule.warmup_epochs = 0.5 is 50 steps, all of train.max_steps = 50: the cosine schedule has no steps "
        "left to decay to schedule.min_lr"]
    assert max_steps_warnings(cfg, epochs=3, max_steps=51, steps_per_epoch=100) == []
    assert max_steps_warnings(cfg, epochs=3, max_steps=20, steps_per_epoch=100)[0].endswith(
        "about 40% of optimizer.lr and never decaying to schedule.min_lr")


def test_step_and_multistep_drops_that_max_steps_cuts_are_warned_about():
    step = ScheduleConfig(name="step", step_epochs=2, gamma=0.5)
    # the drop after epoch 2 acts from step 20 (0-based) on: max_steps 20 ends the run on step 19
    rates = [lr_at(s, total_steps=20, steps_per_epoch=10, base_lr=0.1, cfg=step) for s in range(20)]
    assert set(rates) == {0.1}
    assert max_steps_warnings(step, epochs=4, max_steps=20, steps_per_epoch=10) == [
        "schedule.step_epochs: the rate first drops after epoch 2, which train.max_steps = 20 (10 steps an epoch) "
        "ends the run before"]
    assert max_steps_warnings(step, epochs=4, max_steps=21, steps_per_epoch=10) == []
    multi = ScheduleConfig(name="multistep", milestones=(1, 3, 6))
    # milestone 6 is past the epochs (schedule_warnings' business); 3 is cut by max_steps, 1 is reached
    assert max_steps_warnings(multi, epochs=5, max_steps=25, steps_per_epoch=10) == [
        "schedule.milestones: the rate drops after epoch 3, which train.max_steps = 25 (10 steps an epoch) ends the "
        "run before"]


def _run_config(mnist_root):
    # 200 training images in batches of 50: 4 steps an epoch; a 1-epoch warm-up ended after 2 steps
    return apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=200", "data.val_size=100",
                                      "model.name=cnn", "model.width=0.25", "train.batch_size=50", "train.epochs=2",
                                      "train.max_steps=2", "schedule.name=constant", "schedule.warmup_epochs=1"])


EXPECTED = ("schedule.warmup_epochs = 1 is 4 steps, more than train.max_steps = 2: the run ends in the warm-up, "
            "its rate rising to only about 50% of optimizer.lr")


def test_train_says_it_when_the_run_starts(mnist_root, tmp_path, capsys):
    train(_run_config(mnist_root), out=tmp_path / "run", quiet=True)
    assert f"mnistlab train: warning: {EXPECTED}" in capsys.readouterr().err


def test_fit_warns_it_too(mnist_root):
    cfg = _run_config(mnist_root)
    data = load_data(DataConfig(dir=str(mnist_root), train_limit=200, val_size=100))
    model = build_model("cnn", width=0.25)
    with pytest.warns(UserWarning, match="the run ends in the warm-up") as caught:
        fit(model, data, cfg)
    assert EXPECTED in [str(w.message) for w in caught]
