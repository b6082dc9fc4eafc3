"""Audit of fine-tuning, the weight average and test-time augmentation: inputs the Python API took silently or
answered with a bare PyTorch traceback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnistlab.data.datasets import Split
from mnistlab.errors import ConfigError, DataError
from mnistlab.models import build_model
from mnistlab.training.ema import WeightAverage
from mnistlab.training.evaluate import evaluate, predict_logits
from mnistlab.training.finetune import freeze, match_parameters


def split_of(n: int, side: int) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.5, float("nan")])
def test_a_weight_average_with_a_decay_outside_0_1_is_refused(decay):
    # 1.5 moved the "average" away from the weights (ema = 1.5 ema - 0.5 w), NaN made it NaN, 1 never moved it:
    # ema.decay is refused so in the config, but the class took anything
    with pytest.raises(ConfigError, match=r"decay must be a number in \(0, 1\)"):
        WeightAverage(nn.Linear(2, 1), decay=decay, warmup=False)
    assert WeightAverage(nn.Linear(2, 1), decay=0.5).decay == 0.5


@pytest.mark.parametrize("shift", [1.0, 2.5, "1"])
def test_a_test_time_shift_that_is_not_a_whole_number_is_a_clear_error(shift):
    # range(1, 2.0) raised "TypeError: 'float' object cannot be interpreted as an integer" from inside the loop
    model = build_model("cnn", width=0.25)
    with pytest.raises(ConfigError, match="a test-time shift must be a whole number of pixels, got"):
        evaluate(model, split_of(4, 28), tta_shift=shift)
    assert evaluate(model, split_of(4, 28), tta_shift=1).loss > 0  # a whole number still works


@pytest.mark.parametrize("tta", [0, 1])
def test_images_of_a_size_the_model_cannot_take_are_a_data_error_naming_the_sizes(tta):
    # PyTorch's "mat1 and mat2 shapes cannot be multiplied (1x800 and 288x10)" said nothing of the images
    model = build_model("cnn", width=0.25, crop=2)
    with pytest.raises(DataError, match=r"the images are 20x20, but the model was built for 28x28 images"):
        evaluate(model, split_of(4, 20), tta_shift=tta)
    with pytest.raises(DataError, match=r"the images are 20x20, but the model was built for 28x28 images"):
        predict_logits(model, split_of(4, 20).images)
    # a model that takes any size (global pooling) still evaluates them, with and without TTA
    resnet = build_model("resnet18", width=0.25)
    for shift in (0, 1):
        ev = evaluate(resnet, split_of(6, 32), tta_shift=shift)
        assert ev.probabilities.shape == (6, 10) and ev.finite


def test_freeze_takes_one_string_of_patterns_as_the_flag_does():
    # a string was iterated letter by letter: "features" froze nothing and failed on the pattern 'f'
    model = build_model("cnn", width=0.25)
    frozen = freeze(model, "features")
    names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert names and all(n.startswith("features.") for n in names) and len(frozen) == len(names)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("classifier."))
    assert match_parameters(model, "features.0.*, classifier.0") == match_parameters(
        model, ["features.0.*", "classifier.0"])
    with pytest.raises(ConfigError, match="pattern 'featrues' matches no parameter"):
        freeze(build_model("cnn", width=0.25), "featrues")


def test_mixing_with_both_alphas_off_returns_the_batch_as_it_is():
    # MixupConfig() is "off unless an alpha is above 0", but mix_batch drew from Beta(0, 0): a torch ValueError
    from mnistlab.config import MixupConfig
    from mnistlab.training.mixing import mix_batch

    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    rng = torch.get_rng_state()
    mixed, partner, share = mix_batch(x, y, MixupConfig())
    assert mixed is x and torch.equal(partner, y) and share == 1.0
    assert torch.equal(torch.get_rng_state(), rng)  # no random numbers drawn: a run without mixing is unchanged
