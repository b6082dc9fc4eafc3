"""`mnistlab evaluate`'s printout, for a dataset whose class names are words; what scoring leaves of the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mnistlab import Config, apply_overrides, train
from mnistlab.cli import main


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((0, 0, 8, array.ndim)) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
                     + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_first_predictions_line_up_for_fashion_mnist_class_names(tmp_path, capsys):
    # A fixed width of 8 fitted the digits: "T-shirt/top" and "Ankle boot" pushed their lines out of line.
    rng = np.random.default_rng(0)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    for prefix, labels in (("train", np.arange(300) % 10), ("t10k", [0, 8, 9, 1, 5, 0, 3, 9, 2, 4])):
        labels = np.array(labels, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (len(labels), 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    cfg = apply_overrides(Config(), [f"data.dir={tmp_path / 'data'}", "data.dataset=fashion-mnist",
                                     "data.download=false", "data.val_size=100", "train.epochs=1",
                                     "tensorboard.enabled=false", "model.name=cnn", "model.width=0.25"])
    train(cfg, out=tmp_path / "run", quiet=True, report=False)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    lines = out.split("first predictions:\n")[1].splitlines()
    assert len(lines) == 10 and "label T-shirt/top  predicted " in lines[0] and "label         Bag  " in lines[1]
    assert len({line.index(" predicted ") for line in lines}) == 1
    assert len({len(line.removesuffix("   <- wrong")) for line in lines}) == 1
    # the per-class table: a row per class and the mean, in columns, as --json has them
    table = out.split("precision and F1:\n")[1].split("\n\n")[0].splitlines()
    assert table[0].split() == ["class", "recall", "precision", "F1", "images"] and len(table) == 12
    assert len({len(row) for row in table}) == 1 and table[1].startswith("  T-shirt/top ")
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    for row, (name, m) in zip(table[1:], report["per_class"].items()):
        assert row.split()[-4:] == [pct(m["recall"]), pct(m["precision"]), pct(m["f1"]), f"{m['images']:,}"]
        assert row.strip().startswith(name)
    assert [m["images"] for m in report["per_class"].values()] == [2, 1, 1, 1, 1, 1, 0, 0, 1, 2]
    assert table[-1].split()[0] == "mean" and table[-1].split()[-1] == "10"
    # the confusion matrix's rows are named (they were 0-9 alone), its columns numbered as the names begin
    matrix = out.split("confusion matrix (rows: true class, columns: predicted, by number):\n")[1].split("\n\n")[0]
    rows = matrix.splitlines()
    assert rows[0].split() == [str(i) for i in range(10)] and len(rows) == 11
    assert rows[1].startswith("0 T-shirt/top ") and rows[10].startswith("9 Ankle boot ")
    assert [sum(map(int, row.split()[-10:])) for row in rows[1:]] == [2, 1, 1, 1, 1, 1, 0, 0, 1, 2]
    assert len({len(row) for row in rows}) == 1  # the columns line up


def test_precision_recall_and_f1_are_counted_from_the_confusion_matrix_as_scikit_learn_does():
    from mnistlab.training.evaluate import class_metrics, macro_average

    # class 0: 5 images, 4 right, 1 taken for 1; class 1 predicted 4 times, 2 rightly; class 2 never predicted;
    # class 3 has no images and is predicted once (a 2 taken for it)
    confusion = torch.tensor([[4, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    rows = class_metrics(confusion)
    assert [r["images"] for r in rows] == [5, 2, 2, 0]
    assert [r["recall"] for r in rows] == [0.8, 1.0, 0.0, None]
    assert [r["precision"] for r in rows] == [1.0, 0.5, 0.0, 0.0]  # never predicted: 0, as sklearn
    assert rows[0]["f1"] == pytest.approx(2 * 0.8 / 1.8) and rows[1]["f1"] == pytest.approx(2 / 3)
    assert rows[2]["f1"] == 0.0 and rows[3]["f1"] == 0.0  # 2TP / (2TP + FP + FN)
    means = macro_average(rows)  # over the classes that have each value
    assert means["recall"] == pytest.approx(1.8 / 3) and means["precision"] == pytest.approx(1.5 / 4)
    assert means["f1"] == pytest.approx((2 * 0.8 / 1.8 + 2 / 3) / 4)


@pytest.mark.parametrize("call", ["evaluate", "predict_logits"])
def test_scoring_leaves_every_layer_in_the_mode_it_had(call):
    # A frozen batch norm held in eval mode inside a training model was put back in training mode (model.train()),
    # so it moved its statistics in the next steps.
    import importlib

    from mnistlab.bench import synthetic_data
    from mnistlab.models import build_model

    ev = importlib.import_module("mnistlab.training.evaluate")  # mnistlab.training.evaluate is the function
    model = build_model("cnn", batch_norm=True, width=0.25)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    norms[0].eval()
    before = [m.training for m in model.modules()]
    split = synthetic_data(4).train
    if call == "evaluate":
        ev.evaluate(model, split)
    else:
        ev.predict_logits(model, split.images)
    assert [m.training for m in model.modules()] == before


def test_a_negative_test_time_shift_is_refused():
    from mnistlab.bench import synthetic_data
    from mnistlab.errors import ConfigError
    from mnistlab.models import build_model
    from mnistlab.training.evaluate import evaluate

    with pytest.raises(ConfigError, match="a test-time shift must be zero or more pixels, got -3"):
        evaluate(build_model("cnn", width=0.25), synthetic_data(4).train, tta_shift=-3)


def test_float_images_outside_0_1_are_refused_with_what_to_do():
    # The models normalize their input: 0-255 floats, or images normalized by the caller too, gave wrong answers
    # with no error (a 7 in 0-255 floats came out a confident 8 or 3).
    from mnistlab.models import build_model
    from mnistlab.training.evaluate import predict_logits

    torch.manual_seed(0)
    model = build_model("cnn", width=0.25)
    digits = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\] \(the model normalizes them itself\), "
                                         r"these span \[0, 255\]: pass them unnormalized, or as uint8 images; "
                                         "divide 0-255 floats by 255"):
        predict_logits(model, digits.float())
    with pytest.raises(ValueError, match=r"these span \[-0.4\d+, 2.\d+\]: pass them unnormalized, or as uint8 "
                                         r"images$"):
        predict_logits(model, (digits.float() / 255 - 0.1307) / 0.3081)
    torch.testing.assert_close(predict_logits(model, digits.float() / 255), predict_logits(model, digits))
