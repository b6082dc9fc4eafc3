import math

import pytest

from mnistlab.config import ScheduleConfig
from mnistlab.errors import ConfigError
from mnistlab.training.schedules import lr_at


def lrs(cfg, total=100, per_epoch=10, base=0.1):
    return [lr_at(s, total_steps=total, steps_per_epoch=per_epoch, base_lr=base, cfg=cfg) for s in range(total)]


def test_constant_with_warmup():
    out = lrs(ScheduleConfig(name="constant", warmup_epochs=0.5))
    assert out[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert set(out[5:]) == {0.1}


def test_step_decays_every_step_epochs():
    out = lrs(ScheduleConfig(name="step", step_epochs=3, gamma=0.5))
    assert out[0] == out[29] == 0.1
    assert out[30] == pytest.approx(0.05)
    assert out[99] == pytest.approx(0.1 * 0.5**3)


def test_cosine_goes_from_base_to_min():
    out = lrs(ScheduleConfig(name="cosine", min_lr=0.001))
    assert out[0] == pytest.approx(0.1)
    assert out[-1] == pytest.approx(0.001)
    assert out[49] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 49 / 99)))
    assert all(a >= b for a, b in zip(out, out[1:]))


def test_onecycle_rises_then_falls():
    cfg = ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=10, final_div_factor=100)
    out = lrs(cfg)
    peak = max(range(100), key=out.__getitem__)
    assert out[0] == pytest.approx(0.01)
    assert out[peak] == pytest.approx(0.1)
    assert 20 <= peak <= 25
    assert out[-1] == pytest.approx(0.1 / 10 / 100)
    assert all(a <= b for a, b in zip(out[:peak], out[1 : peak + 1]))
    assert all(a >= b for a, b in zip(out[peak:], out[peak + 1 :]))


def test_settings_the_schedule_does_not_read_are_named():
    # A warm-up given to the default one-cycle schedule was ignored without a word.
    from mnistlab.training.schedules import schedule_warnings

    assert schedule_warnings(ScheduleConfig()) == []
    assert schedule_warnings(ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr=1e-4)) == []
    assert schedule_warnings(ScheduleConfig(name="cosine", gamma=0.5, pct_start=0.3)) == [
        "schedule.gamma = 0.5 is not used by the cosine schedule (it is read by step and multistep only)",
        "schedule.pct_start = 0.3 is not used by the cosine schedule (it is read by onecycle only)",
    ]


def test_a_run_warns_of_a_warm_up_the_one_cycle_schedule_ignores(mnist_root, tmp_path, capsys):
    from mnistlab.config import Config, apply_overrides
    from mnistlab.training import train

    cfg = apply_overrides(Config(), [
        f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100", "model.name=cnn", "model.width=0.25",
        "train.threads=1", "train.epochs=1", "train.progress=false", "tensorboard.enabled=false",
        "schedule.warmup_epochs=0.5",
    ])
    train(cfg, out=tmp_path / "run", quiet=True, report=False)
    assert capsys.readouterr().err == (
        "mnistlab train: warning: schedule.warmup_epochs = 0.5 is not used by the onecycle schedule (it is read by "
        "constant, step, multistep and cosine only; one-cycle rises over its first pct_start of the steps)\n")


def test_step_with_warmup_counts_epochs_from_the_first_step():
    # The warm-up is part of the first epochs, not a delay of the decay: with 1 warm-up epoch and
    # step_epochs 2 the rate still drops at step 20 (epoch 2), as without a warm-up.
    out = lrs(ScheduleConfig(name="step", warmup_epochs=1.0, step_epochs=2, gamma=0.5))
    assert out[:10] == pytest.approx([0.01 * (s + 1) for s in range(10)])
    assert out[10] == out[19] == 0.1
    assert out[20] == pytest.approx(0.05) and out[39] == pytest.approx(0.05)
    assert out[40] == pytest.approx(0.025)
    assert out[99] == pytest.approx(0.1 * 0.5**4)


def test_cosine_with_warmup_starts_at_base_lr_and_decays_over_the_steps_after_it():
    # After 10 warm-up steps the cosine runs over the remaining 90 (steps 10..99): it starts at base_lr
    # exactly, not part-way down as it would if the warm-up steps counted in its phase.
    out = lrs(ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr=0.001))
    assert out[9] == pytest.approx(0.1)  # the last warm-up step reaches base_lr
    assert out[10] == 0.1
    assert out[55] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 45 / 89)), rel=1e-12)
    assert out[99] == pytest.approx(0.001)


@pytest.mark.parametrize("total, pct_start", [(100, 0.25), (37, 0.3), (1000, 0.25), (64, 0.5),
                                              (8, 0.9), (16, 0.1), (3, 0.5), (1, 0.25), (5, 0.99)])
def test_onecycle_matches_pytorchs_onecyclelr_step_by_step(total, pct_start):
    # PyTorch's OneCycleLR peaks at step pct_start * total - 1 (a float); ranges like "peak within 20..25"
    # cannot tell that from pct_start * total. Compared at every step, to rounding. The short runs: spans of
    # less than a step were rounded up to one (8 steps at pct_start 0.9 ended at 96x the end rate).
    import torch

    cfg = ScheduleConfig(name="onecycle", pct_start=pct_start, div_factor=25.0, final_div_factor=1e4)
    ours = lrs(cfg, total=total, per_epoch=10, base=0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=total, pct_start=pct_start, anneal_strategy="cos", cycle_momentum=False,
        div_factor=25.0, final_div_factor=1e4, three_phase=False)
    theirs = []
    for step in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        if step < total - 1:
            sched.step()
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)


@pytest.mark.parametrize("milestones, gamma", [((3, 7), 0.1), ((1,), 0.5), ((2, 3, 4), 0.3), ((12,), 0.1)])
def test_multistep_matches_pytorchs_multisteplr_epoch_by_epoch(milestones, gamma):
    import torch

    cfg = ScheduleConfig(name="multistep", milestones=milestones, gamma=gamma)
    ours = lrs(cfg, total=100, per_epoch=10, base=0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    theirs = []
    for _ in range(10):  # epochs
        theirs += [opt.param_groups[0]["lr"]] * 10
        opt.step()
        sched.step()
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)


def test_multistep_warms_up_and_says_what_it_needs():
    out = lrs(ScheduleConfig(name="multistep", milestones=(5,), gamma=0.5, warmup_epochs=1.0))
    assert out[0] == pytest.approx(0.01) and out[9] == pytest.approx(0.1) and out[10] == 0.1 and out[50] == 0.05
    with pytest.raises(ConfigError, match="schedule.name = multistep needs schedule.milestones"):
        ScheduleConfig(name="multistep")
    for bad in ((5, 3), (3, 3), (0, 2)):
        with pytest.raises(ConfigError, match="schedule.milestones must be epochs of 1 or more in increasing order"):
            ScheduleConfig(name="multistep", milestones=bad)
    from mnistlab.training.schedules import schedule_warnings

    assert schedule_warnings(ScheduleConfig(name="multistep", milestones=(5, 20, 30)), epochs=20) == [
        "schedule.milestones: the rate drops after epoch 20, 30 only in a run resumed with more epochs than "
        "train.epochs = 20"]
    assert schedule_warnings(ScheduleConfig(name="step", milestones=(5,))) == [
        "schedule.milestones = (5,) is not used by the step schedule (it is read by multistep only)"]


def test_a_onecycle_that_peaks_at_step_0_starts_at_the_peak():
    # pct_start * total = 1: PyTorch's OneCycleLR divides by zero there
    cfg = ScheduleConfig(name="onecycle", pct_start=0.5, div_factor=25.0, final_div_factor=1e4)
    assert lrs(cfg, total=2, per_epoch=2, base=0.1) == pytest.approx([0.1, 0.1 / 25 / 1e4], rel=1e-12)


def test_a_step_schedule_past_float_range_gives_an_infinite_rate_not_an_overflow_error():
    # gamma 1e200 (a rising schedule) at its third step: Python's float power raised OverflowError mid-run, a
    # traceback; an infinite rate is stopped by the run's non-finite loss check instead.
    cfg = ScheduleConfig(name="step", gamma=1e200)
    assert lr_at(10, total_steps=40, steps_per_epoch=10, base_lr=1e-300, cfg=cfg) == 1e-100
    assert lr_at(30, total_steps=40, steps_per_epoch=10, base_lr=1e-300, cfg=cfg) == math.inf
