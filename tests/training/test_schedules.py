import math

import pytest

from mnistlab.config import ScheduleConfig
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
