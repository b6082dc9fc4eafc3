"""Audit 153, mutation testing of training/finetune.py and training/lr_find.py: one test for each hand-made
mutant that the existing tests let live and whose behaviour would be wrong for a user (a batch-norm layer held
in eval mode with a trainable parameter, a classifier head renumbered into another head's tensors, the range
test's descent measured from the wrong start, its boundaries of "enough steps", "no more than the noise" and
"passes diverge times its lowest")."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from mnistlab.errors import CheckpointError
from mnistlab.models import build_model
from mnistlab.training import lr_find
from mnistlab.training.finetune import freeze, hold_frozen_batch_norm, init_from_checkpoint, renumbered_head
from mnistlab.training.lr_find import descent, steepest_descent


def test_a_batch_norm_layer_is_held_in_eval_mode_only_when_all_its_parameters_are_frozen():
    # frozen weight and bias: a fixed function (held); only the weight frozen: its bias still trains, so the layer
    # trains as any other; no parameters at all (affine=False): nothing of it was frozen, so it trains too
    net = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3), nn.BatchNorm1d(3, affine=False))
    assert len(freeze(net, "0, 1.weight")) == 3
    net.train()
    hold_frozen_batch_norm(net)
    assert [m.training for m in net] == [False, True, True]
    before = net[2].running_mean.clone()
    net(torch.randn(8, 3) + 5)  # a layer in training mode updates its running statistics
    assert not torch.equal(net[2].running_mean, before)


def _payload(net: nn.Module) -> dict:
    return {"model_name": "cnn", "model": net.state_dict(), "num_classes": 10, "in_channels": 1,
            "image_size": [28, 28], "dataset": "other", "epoch": 1}


def test_weights_of_a_head_with_more_layers_are_a_checkpoint_error_not_a_key_error():
    # Two hidden layers and dropout (classifier 1, 4, 7) against one hidden layer and none (0, 2): the lengths
    # differ, so the head is not renumbered; pairing the first keys only left the rest unnamed (a KeyError)
    torch.manual_seed(0)
    theirs = build_model("cnn", width=0.25, hidden=[16, 16], dropout=0.25)
    ours = build_model("cnn", width=0.25, hidden=[16], dropout=0.0)
    state = theirs.state_dict()
    assert renumbered_head(state, ours.state_dict()) is state
    with pytest.raises(CheckpointError, match="finetune.init_from: "):
        init_from_checkpoint(ours, _payload(theirs), model_name="cnn", num_classes=10, in_channels=1,
                             image_size=(28, 28))


def test_two_of_the_checkpoints_head_layers_are_not_renamed_into_one():
    # classifier.1.weight and classifier.2.bias are two layers' halves: renamed to classifier.0.weight and
    # classifier.0.bias, they would load as one layer that was never trained as such
    state = {"classifier.1.weight": 1, "classifier.2.bias": 2, "features.0.weight": 3}
    own = {"classifier.0.weight": 0, "classifier.0.bias": 0, "features.0.weight": 0}
    assert renumbered_head(state, own) is state
    # the same numbers shifted as a whole (dropout on in the checkpoint, off here) are renamed
    shifted = {"classifier.1.weight": 1, "classifier.1.bias": 2, "features.0.weight": 3}
    assert renumbered_head(shifted, own) == {"classifier.0.weight": 1, "classifier.0.bias": 2, "features.0.weight": 3}


def test_the_descent_is_measured_from_the_highest_average_after_the_settling_steps():
    # after the one skipped step the average rose to 2.5 before falling to 1.5: the fall is 1.0, not the 0.5
    # below the first kept value; the noise is that of the losses up to the lowest point (by hand: the median
    # of |diff| 0.5, 0.5, 1.0 is 0.5, / 0.954)
    fall, noise = descent([2.3, 2.0, 2.5, 1.5, 1.7], [2.3, 1.8, 2.3, 1.3, 9.0], skip_begin=1)
    assert fall == pytest.approx(1.0) and noise == pytest.approx(0.5 / 0.954)


def test_a_fall_of_exactly_the_noise_bound_is_no_suggestion():
    # "no more than NOISE_FALLS times the noise": |diffs| all 0.954 make the noise 1.0; a fall of exactly 2.0
    losses = [0.0, 0.954, 0.0, 0.954]
    assert descent([4.0, 3.0, 2.0, 2.0], losses, skip_begin=0) == (2.0, 1.0)
    assert lr_find.NOISE_FALLS == 2.0
    assert steepest_descent([1, 2, 3, 4], [4.0, 3.0, 2.0, 2.5], skip_begin=0, skip_end=0, losses=losses) is None
    # a little more fall is a suggestion (np.gradient's slopes -1, -1.05, -0.25 up to the lowest: the second)
    assert steepest_descent([1, 2, 3, 4], [4.0, 3.0, 1.9, 2.5], skip_begin=0, skip_end=0, losses=losses) == 2


def test_a_curve_lowest_at_its_third_kept_point_has_a_suggestion():
    # Three points from the first kept one to the lowest one inclusive are enough (MIN_STEPS counts them so,
    # and why_no_suggestion says "too early" only for a lowest point before them)
    assert steepest_descent([1, 2, 3, 4], [3.0, 2.0, 1.0, 1.5], skip_begin=0, skip_end=0) == 1
    smoothed = [2.3] * 10 + [2.2, 2.0, 1.0, 1.5, 1.6]  # lowest at step 13, the 3rd after the 10 skipped
    lrs = [float(i) for i in range(1, 16)]
    assert steepest_descent(lrs, smoothed) is not None
    assert steepest_descent(lrs, smoothed[:12] + [2.5, 2.6, 2.7]) is None  # lowest at step 12: too early


class _FakeTrainer:
    def set_lr(self, lr: float) -> None:
        self.lr = lr


def test_the_test_ends_when_the_average_passes_diverge_times_its_lowest_not_when_it_reaches_it():
    # as fastai's (smooth_loss > 4 * best_loss) and Lightning's: exactly 2x its lowest goes on, above it ends;
    # beta 0 makes the average the loss itself
    probe = lr_find._RangeCallback([1e-3, 1e-2, 1e-1, 1.0], diverge=2.0, beta=0.0)
    trainer = _FakeTrainer()
    for step, loss in enumerate([1.0, 2.0, 1.5], 1):
        probe.on_batch_begin(step - 1, trainer)
        probe.on_batch_end(step, {"loss": loss, "lr": trainer.lr}, trainer)
    assert probe.smoothed == [1.0, 2.0, 1.5]
    probe.on_batch_begin(3, trainer)
    with pytest.raises(lr_find._Ended, match=r"passed 2x its lowest value at lr 1.00e\+00 \(step 4 of 4\)"):
        probe.on_batch_end(4, {"loss": 2.01, "lr": trainer.lr}, trainer)


def test_a_rate_of_exactly_float32s_largest_number_is_still_taken():
    # The trainer applies FLOAT32_MAX itself (only a larger rate becomes inf): --min-lr 1 and --max-lr
    # 3.4028234663852886e38 plan it exactly as the last rate, and that step runs
    from mnistlab.config import FLOAT32_MAX

    probe = lr_find._RangeCallback([1.0, FLOAT32_MAX], diverge=4.0, beta=0.98)
    trainer = _FakeTrainer()
    probe.on_batch_begin(1, trainer)
    assert trainer.lr == FLOAT32_MAX == lr_find.geometric_rates(1.0, FLOAT32_MAX, 2)[-1]
    with pytest.raises(lr_find._Ended, match="above float32's largest number"):
        lr_find._RangeCallback([1.0, FLOAT32_MAX * 1.0000001], diverge=4.0, beta=0.98).on_batch_begin(1, trainer)


def test_beta_0_is_allowed_and_leaves_the_losses_unsmoothed():
    # check_settings' (and lr_range_test's) range for beta is [0, 1): 0 weighs none of the past
    lr_find.check_settings(1e-7, 10.0, 100, 4.0, 0.0)
    assert lr_find.smooth([2.0, 1.0, 3.0], beta=0.0) == [2.0, 1.0, 3.0]


def test_diverge_compares_with_the_lowest_smoothed_loss_not_one_batchs_loss():
    # One lucky batch (0.1) is not the curve's lowest point: the average never fell below about 0.53, and no
    # later average passes 4x that, so the test runs to max_lr (4x the batch's 0.1 would have ended it at step 2)
    probe = lr_find._RangeCallback([1e-3, 1e-2, 1e-1, 1.0], diverge=4.0, beta=0.9)
    trainer = _FakeTrainer()
    losses = [1.0, 0.1, 1.0, 1.0]
    with pytest.raises(lr_find._Ended) as ended:
        for step, loss in enumerate(losses, 1):
            probe.on_batch_begin(step - 1, trainer)
            probe.on_batch_end(step, {"loss": loss, "lr": trainer.lr}, trainer)
    assert str(ended.value) == "reached max_lr 1.00e+00 after 4 steps"
    assert probe.smoothed == pytest.approx(lr_find.smooth(losses, beta=0.9)) and min(probe.smoothed) > 0.5


def test_an_average_that_rose_by_a_tenth_or_more_did_not_hardly_change():
    # "hardly changed" is within -1% and +5% of the first average: one that rose steadily to over 1.1x it, lowest
    # at its first step, is the lowest point too early, with that advice
    lrs = lr_find.geometric_rates(1e-3, 1.0, 40)
    losses = [2.3 + 0.02 * i for i in range(40)]
    s = lr_find.smooth(losses)
    assert 1.1 < max(s) / s[0] < 1.5 and min(s) == s[0]
    result = lr_find.RangeTest(lrs, losses, s, None, lrs[0], "reached max_lr 1.00e+00 after 40 steps")
    assert result.why_no_suggestion(40).startswith("the average loss was lowest at step 1, too early")


def test_a_lowest_average_at_step_13_is_not_called_too_early():
    # Step 13 leaves 3 points after the 10 skipped ones, enough for a slope: without the noise rule it is a
    # suggestion, so its None came from the fall within the noise, and that is what the user is told
    lrs = lr_find.geometric_rates(1e-6, 1e-4, 40)
    s = [2.4] + [2.3] * 11 + [2.2] + [2.35] * 27
    losses = [2.3 + (0.3 if i % 2 else -0.3) for i in range(40)]
    assert steepest_descent(lrs, s) is not None and steepest_descent(lrs, s, losses=losses) is None
    result = lr_find.RangeTest(lrs, losses, s, None, lrs[12], "reached max_lr 1.00e-04 after 40 steps")
    assert result.why_no_suggestion(40).startswith("the average loss fell by 0.1000 to its lowest (2.2000, at lr ")


def test_the_default_smoothing_is_fastais_beta_098_with_bias_correction():
    # fastai and Lightning: avg = 0.98 * avg + 0.02 * loss, reported as avg / (1 - 0.98 ** n); by hand for 1, 2:
    # 0.02 / 0.02 = 1, then (0.98 * 0.02 + 0.02 * 2) / (1 - 0.9604) = 0.0596 / 0.0396
    assert lr_find.smooth([1.0, 2.0]) == pytest.approx([1.0, 0.0596 / 0.0396], rel=1e-12)
    assert inspect.signature(lr_find.lr_range_test).parameters["beta"].default == 0.98
