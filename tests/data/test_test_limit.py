"""data.test_limit: a run tested on the first N test images only, and saying so everywhere its accuracy shows."""

from __future__ import annotations

import json

import pytest
import torch

from mnistlab import Config, apply_overrides, train
from mnistlab.cli import main
from mnistlab.config import DataConfig
from mnistlab.data import load_data, load_test
from mnistlab.errors import ConfigError
from mnistlab.report.compare import compare_runs, format_table
from mnistlab.training.checkpoint import load_model
from mnistlab.training.evaluate import evaluate


def test_the_first_n_test_images_and_labels_in_file_order(mnist_root):
    whole = load_test(DataConfig(dir=str(mnist_root), download=False)).test
    assert len(whole) == 10000
    for loader in (lambda cfg: load_data(cfg).test, lambda cfg: load_test(cfg).test):
        part = loader(DataConfig(dir=str(mnist_root), download=False, val_size=500, test_limit=1234))
        assert len(part) == 1234
        assert torch.equal(part.images, whole.images[:1234]) and torch.equal(part.labels, whole.labels[:1234])
        assert torch.equal(part.indices, torch.arange(1234))  # the positions in the test file, as the report shows
        # above the test set's size: all of it, as train_limit keeps all of the training set
        assert len(loader(DataConfig(dir=str(mnist_root), download=False, val_size=500, test_limit=10**6))) == 10000
    # what the run's summary reads: whether the limit cut anything (the test set's own size cuts nothing)
    cut = {limit: load_data(DataConfig(dir=str(mnist_root), download=False, val_size=500, test_limit=limit)).test_partial
           for limit in (None, 9999, 10000)}
    assert cut == {None: False, 9999: True, 10000: False}


def test_the_training_and_validation_splits_do_not_change(mnist_root):
    a = load_data(DataConfig(dir=str(mnist_root), download=False, val_size=500, train_limit=700))
    b = load_data(DataConfig(dir=str(mnist_root), download=False, val_size=500, train_limit=700, test_limit=10))
    assert torch.equal(a.train.indices, b.train.indices) and torch.equal(a.val.indices, b.val.indices)
    assert (a.mean, a.std) == (b.mean, b.std)


@pytest.mark.parametrize("value, message", [
    (0, "data.test_limit must be greater than zero, got 0"),
    (-5, "data.test_limit must be greater than zero, got -5"),
])
def test_a_limit_of_no_images_is_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(test_limit=value)
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [f"data.test_limit={value}"])


@pytest.fixture(scope="module")
def limited_run(mnist_root, tmp_path_factory):
    cfg = apply_overrides(Config(), [
        f"data.dir={mnist_root}", "data.download=false", "data.train_limit=600", "data.val_size=300",
        "data.test_limit=700", "model.name=cnn", "model.width=0.25", "train.epochs=1", "train.batch_size=100",
        "train.threads=1", "tensorboard.enabled=false", "train.progress=false",
    ])
    out = tmp_path_factory.mktemp("limited") / "run"
    return out, train(cfg, out=out)


def test_the_run_is_tested_on_those_images_and_says_so(limited_run, mnist_root, capsys):
    out, result = limited_run
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["test_images"], summary["test_limit"]) == (700, 700)
    first = load_test(DataConfig(dir=str(mnist_root), download=False, test_limit=700)).test
    again = evaluate(load_model(out / "best.ckpt"), first)
    assert summary["test_accuracy"] == again.accuracy == result.test.accuracy
    assert len(result.test.labels) == 700 and int(result.test.confusion.sum()) == 700


def test_the_final_line_names_the_images(mnist_root, tmp_path, capsys):
    assert main(["train", "--data-dir", str(mnist_root), "--model", "cnn", "--epochs", "1", "--threads", "1",
                 "--out", str(tmp_path / "run"), "--set", "data.train_limit=300", "--set", "data.val_size=200",
                 "--set", "data.test_limit=250", "--set", "model.width=0.25", "--set", "tensorboard.enabled=false",
                 "--set", "train.report=false", "--set", "data.download=false"]) == 0
    final = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test accuracy")]
    assert len(final) == 1 and " on the first 250 test images (data.test_limit) with best.ckpt" in final[0], final


@pytest.mark.parametrize("limit", [20000, 10000])  # above the test set's size, and its size (nothing cut)
def test_a_limit_above_the_test_sets_size_is_a_whole_test(limit, mnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(mnist_root), "--model", "cnn", "--epochs", "1", "--threads", "1",
                 "--out", str(out), "--set", "data.train_limit=300", "--set", "data.val_size=200",
                 "--set", f"data.test_limit={limit}", "--set", "model.width=0.25", "--set", "tensorboard.enabled=false",
                 "--set", "train.report=false", "--set", "data.download=false"]) == 0
    final = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test accuracy")]
    assert len(final) == 1 and "test images" not in final[0], final
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_images"] == 10000 and "test_limit" not in summary
    assert "*" not in format_table(compare_runs([out]))


def test_evaluate_and_ensemble_test_a_limited_run_on_the_whole_test_set(limited_run, one_step_run, mnist_root,
                                                                         capsys):
    out, _ = limited_run
    whole = evaluate(load_model(out / "best.ckpt"), load_test(DataConfig(dir=str(mnist_root), download=False)).test)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(map(sum, report["confusion_matrix"])) == 10000 and report["test_accuracy"] == whole.accuracy
    assert main(["ensemble", str(out), str(one_step_run), "--json"]) == 0
    members = json.loads(capsys.readouterr().out)["members"]
    assert members[0]["test_accuracy"] == whole.accuracy


def test_compare_and_the_report_mark_the_accuracy_of_a_partial_test(limited_run, one_step_run):
    out, _ = limited_run
    rows = compare_runs([out, one_step_run])
    table = format_table(rows)
    limited = next(line for line in table.splitlines() if line.startswith(str(out)))
    whole = next(line for line in table.splitlines() if line.startswith(str(one_step_run)))
    assert "%*" in limited and "%*" not in whole
    assert (f"note: * tested on the first images of the test set only (data.test_limit): {out} on 700; an "
            "accuracy on other images is not comparable") in table
    assert [r.test_limit_images for r in rows if r.run == str(out)] == [700]
    assert "test accuracy (first 700 images)" in (out / "report.html").read_text()


def test_bench_measures_time_to_accuracy_on_the_whole_test_set(mnist_root, monkeypatch, capsys):
    from mnistlab import bench

    seen = {}

    def recipe(data, seed, reuse_memory):
        seen["recipe"] = len(data.test)
        return {"test_accuracy": 0.9, "train_seconds": 0.2, "precision": "fp32"}

    def mine(overrides, seeds, config):
        seen["config"] = config.data.test_limit
        return [{"test_accuracy": 0.9, "train_seconds": 0.1, "precision": "fp32", "compile_seconds": 0.0}]

    monkeypatch.setattr(bench, "public_recipe", recipe)
    monkeypatch.setattr(bench, "time_to_accuracy", mine)
    monkeypatch.setattr(bench, "roofline", lambda *a, **k: [])
    monkeypatch.setattr(bench, "thread_scaling", lambda: "")
    monkeypatch.setattr(bench, "eval_seconds", lambda model, split, *a, **k: (seen.setdefault("eval", len(split)), 0))
    cfg = apply_overrides(Config(), {"data.dir": str(mnist_root), "data.test_limit": 300, "train.threads": 1})
    bench.run_bench(cfg, models=["cnn"], steps=1, train_limit=256, out=lambda line: None)
    assert seen == {"recipe": 10000, "config": None, "eval": 10000}
    err = capsys.readouterr().err
    assert err.count("mnistlab bench: warning: data.test_limit = 300 is not used by bench: time to accuracy is "
                     "measured on the whole test set") == 1, err
