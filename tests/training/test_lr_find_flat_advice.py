"""lr-find's reason for no suggestion on a flat curve follows why the test stopped: "raise --max-lr" only where it
reached --max-lr; a test that a rate broke first (a loss not finite, a rate past float32) would break sooner."""

from mnistlab.training.lr_find import MIN_STEPS, RangeTest


def _flat(stop_reason):
    n = MIN_STEPS + 6
    lrs = [10 ** (-7 + 8 * i / (n - 1)) for i in range(n)]
    losses = [2.30 + 0.001 * (i % 2) for i in range(n)]
    return RangeTest(lrs=lrs, losses=losses, smoothed=list(losses), suggestion=None, lowest=lrs[0],
                     stop_reason=stop_reason, precision="fp32")


def test_a_flat_curve_that_reached_max_lr_asks_for_a_larger_max_lr():
    text = _flat("reached max_lr 1.00e+01 after 20 steps").why_no_suggestion(20)
    assert text.startswith("the average loss hardly changed") and text.endswith("raise --max-lr")


def test_a_flat_curve_ended_by_a_broken_step_asks_for_more_steps_not_a_larger_max_lr():
    for reason in ("the loss was not finite at lr 1.00e+01 (step 21)",
                   "the next rate, 1.00e+40 (step 21 of 30), is above float32's largest number (3.40e+38), which "
                   "the weights cannot take"):
        text = _flat(reason).why_no_suggestion(30)
        assert text.startswith("the average loss hardly changed"), text
        assert "raise --max-lr" not in text and "raise --steps, so that the rates rise more slowly" in text
