"""train.class_weights: Keras' class_weight, each training image's loss times its class's weight."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from mnistlab import Config, apply_overrides, build_model, evaluate, fit
from mnistlab.errors import ConfigError
from mnistlab.training.fit import Trainer, class_weights


def cfg(*extra: str) -> Config:
    return apply_overrides(Config(), ["train.epochs=1", "train.batch_size=100", "train.threads=1",
                                      "train.precision=fp32", *extra])


def model(data):
    torch.manual_seed(0)
    return build_model("cnn", width=0.25, mean=data.mean, std=data.std)


@pytest.mark.parametrize("value, message", [
    ("even", 'must be a list of weights, one per class, or "balanced", got \'even\''),
    ("[1, -1]", r"must be finite numbers of 0 or more, not all 0, got \[1.0, -1.0\]"),
    ("[0, 0]", r"must be finite numbers of 0 or more, not all 0, got \[0.0, 0.0\]"),
    ("[1, nan]", r"must be finite numbers"),
])
def test_bad_weights_are_refused_with_the_key(value, message):
    with pytest.raises(ConfigError, match=rf"train.class_weights {message}"):
        cfg(f"train.class_weights={value}")


def test_balanced_weighs_each_class_by_its_share_of_the_training_split():
    data = types.SimpleNamespace(train=types.SimpleNamespace(labels=torch.tensor([0, 0, 0, 1, 2, 2])),
                                 num_classes=3, classes=["a", "b", "c"])
    # n / (classes x count): 6 / (3 x 3), 6 / (3 x 1), 6 / (3 x 2); every class then weighs 2 in all
    assert class_weights("balanced", data).tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    data.train.labels = torch.tensor([0, 0, 2])
    with pytest.raises(ConfigError, match='"balanced" weighs each class by its training images, and the training '
                                          "split has none of b; give the weights as a list"):
        class_weights("balanced", data)
    with pytest.raises(ConfigError, match=r"has 2 weights, but the data has 3 classes \(a, b, c\): give one per "
                                          "class, in that order"):
        class_weights((1.0, 2.0), data)


def test_a_wrong_count_fails_before_training(mnist_small):
    with pytest.raises(ConfigError, match="has 3 weights, but the data has 10 classes"):
        fit(model(mnist_small), mnist_small, cfg("train.class_weights=[1, 2, 3]"))


def test_the_loss_is_the_mean_over_images_of_each_ones_weighted_loss(mnist_small):
    # As Keras' class_weight: weights scale each image's loss, the batch's loss is divided by its images (not by
    # the weights' sum, as cross_entropy(weight=...) does), with label smoothing and mixup as without weights.
    weights = [0.5, 1, 2, 1, 1, 3, 1, 1, 0, 1]
    trainer = Trainer(model(mnist_small), mnist_small, cfg(f"train.class_weights={weights}",
                                                           "train.label_smoothing=0.1"))
    torch.manual_seed(1)
    logits, y, partner = torch.randn(8, 10), torch.tensor([0, 1, 2, 5, 8, 9, 5, 0]), torch.tensor([1] * 8)
    w = torch.tensor(weights, dtype=torch.float32)

    def expected(labels):
        return (F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none") * w[labels]).mean()

    assert trainer._loss(logits, y, 8).item() == pytest.approx(expected(y).item(), rel=1e-6)
    # a part of a batch of 32 rows (train.micro_batch_size): its share of the batch's mean
    assert trainer._loss(logits, y, 32).item() == pytest.approx(expected(y).item() / 4, rel=1e-6)
    mixed = trainer._loss(logits, y, 8, mix=(partner, 0.7)).item()
    assert mixed == pytest.approx(0.7 * expected(y).item() + 0.3 * expected(partner).item(), rel=1e-6)


def test_equal_weights_train_as_no_weights_and_a_zero_weight_leaves_its_class_unlearnt(mnist_small):
    plain = fit(model(mnist_small), mnist_small, cfg()).model
    ones = fit(model(mnist_small), mnist_small, cfg("train.class_weights=[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]")).model
    assert max((a - b).abs().max().item() for a, b in zip(plain.state_dict().values(), ones.state_dict().values())) < 1e-5
    no_threes = fit(model(mnist_small), mnist_small, cfg("train.class_weights=[1, 1, 1, 0, 1, 1, 1, 1, 1, 1]")).model
    per_class = evaluate(no_threes, mnist_small.val).per_class_accuracy
    assert per_class[3] < 0.05 and min(per_class[:3] + per_class[4:]) > 0.3, per_class
    assert evaluate(plain, mnist_small.val).per_class_accuracy[3] > 0.3  # the same run learns 3s unweighted
