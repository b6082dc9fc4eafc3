"""Scoring a trained model (audit 124): evaluate()'s settings checked before any image is scored, predict_logits
of a model without parameters, and `mnistlab evaluate --json` against plain PyTorch on the same checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.data.batching import Split
from mnistlab.errors import ConfigError
from mnistlab.models import build_model
from mnistlab.training.evaluate import evaluate, predict_logits


def _split(n: int = 40) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("smoothing", [-0.1, float("nan"), 1.0, 1.5, "0.1", True])
def test_a_label_smoothing_outside_0_1_is_refused_before_scoring(smoothing):
    # -0.1 and NaN scored with no smoothing at all, without a word (PyTorch smooths only where it is > 0);
    # 1.5 was PyTorch's RuntimeError and "0.1" its TypeError, from the first batch's loss
    with pytest.raises(ConfigError, match=r"evaluate\(\): label_smoothing must be a number in \[0, 1\), as "
                                          r"train.label_smoothing, got "):
        evaluate(build_model("cnn", width=0.25), _split(), label_smoothing=smoothing)


def test_label_smoothings_the_config_takes_still_score():
    model, split = build_model("cnn", width=0.25), _split()
    plain = evaluate(model, split).loss
    assert evaluate(model, split, label_smoothing=0).loss == pytest.approx(plain)
    smoothed = evaluate(model, split, label_smoothing=np.float32(0.1)).loss  # a NumPy number as a float
    assert smoothed == pytest.approx(evaluate(model, split, label_smoothing=0.1).loss) and smoothed != plain


@pytest.mark.parametrize("num_classes", [10.0, 0, -1, "10", True])
def test_a_class_count_that_is_not_a_whole_number_is_refused_before_scoring(num_classes):
    # 10.0 was bincount's TypeError once the whole split had been scored (minutes for the big models), and 0
    # was taken for "not given"
    scored = []
    with pytest.raises(ConfigError, match=r"evaluate\(\): num_classes must be a whole number of classes, 1 or "
                                          r"more \(or None: the model's output count\), got "):
        evaluate(build_model("cnn", width=0.25), _split(), num_classes=num_classes,
                 progress=lambda done, total: scored.append(done))
    assert scored == []


def test_whole_class_counts_still_score():
    model, split = build_model("cnn", width=0.25), _split()
    assert evaluate(model, split, num_classes=np.int64(10)).confusion.shape == (10, 10)
    assert evaluate(model, split, num_classes=12).confusion.shape == (12, 12)  # classes the model lacks: no images


class NearestMean(nn.Module):
    """A baseline of buffers alone: minus the squared distance to each class's mean image."""

    def __init__(self, means: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)  # classes x pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div(255) if x.dtype == torch.uint8 else x
        return -torch.cdist(x.flatten(1), self.means) ** 2


@pytest.mark.parametrize("model", [NearestMean(torch.rand(10, 784)), nn.Flatten()], ids=["buffers", "nothing"])
def test_predict_logits_takes_a_model_without_parameters_as_evaluate_does(model):
    # next(model.parameters()) was a bare StopIteration, no message
    split = _split()
    logits = predict_logits(model, split.images, batch_size=16)
    assert logits.shape == (40, 10 if isinstance(model, NearestMean) else 784)
    if isinstance(model, NearestMean):
        assert torch.equal(logits.argmax(1), evaluate(model, split).predictions)


def test_evaluate_json_matches_plain_pytorch_on_the_checkpoint(mnist_root, mnist_small, tmp_path, capsys):
    # A run with label smoothing and a cropping model (its own forward cuts the border): `mnistlab evaluate`'s
    # loss, accuracy, confusion matrix and per-class numbers, and the run's own test figures, as a plain forward
    # of the checkpoint's model in eval mode over the test images scores them.
    from mnistlab import Config, apply_overrides, train
    from mnistlab.cli import main
    from mnistlab.training.checkpoint import model_from_checkpoint, read_checkpoint

    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.download=false", "data.train_limit=300",
                                     "data.val_size=200", "train.epochs=1", "tensorboard.enabled=false",
                                     "model.name=cnn", "model.width=0.25", "model.crop=2", "model.dropout=0.5",
                                     "train.label_smoothing=0.2", "train.eval_batch_size=333"])
    run = train(cfg, out=tmp_path / "run", quiet=True, report=False)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)

    model = model_from_checkpoint(read_checkpoint(tmp_path / "run" / "best.ckpt")).eval()
    images, labels = mnist_small.test.images, mnist_small.test.labels
    with torch.no_grad():
        logits = torch.cat([model(images[i:i + 1000].float() / 255) for i in range(0, len(labels), 1000)])
    predicted = logits.argmax(1)
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    accuracy = (predicted == labels).double().mean().item()
    loss = F.cross_entropy(logits, labels, label_smoothing=0.2).item()
    assert got["confusion_matrix"] == confusion.tolist() and got["examples"] == 10_000
    assert got["test_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert got["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert not math.isclose(loss, F.cross_entropy(logits, labels).item(), rel_tol=1e-3)  # the smoothing counts
    for c in range(10):
        hit, images_c, said = confusion[c, c].item(), confusion[c].sum().item(), confusion[:, c].sum().item()
        row = got["per_class"][str(c)]
        assert row["images"] == images_c and row["recall"] == pytest.approx(hit / images_c)
        assert row["precision"] == pytest.approx(hit / said if said else 0.0)
        assert got["per_class_accuracy"][str(c)] == pytest.approx(hit / images_c)
    assert run.summary["test_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert run.summary["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_a_boolean_tta_shift_is_refused_not_taken_for_one_pixel():
    import torch

    from mnistlab.data import Split
    from mnistlab.models import build_model
    from mnistlab.training.evaluate import evaluate

    split = Split(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="a test-time shift must be a whole number of pixels, got True"):
        evaluate(build_model("cnn", width=0.25), split, tta_shift=True)
