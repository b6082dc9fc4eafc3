"""One real run: `mnistlab train` in a subprocess on real MNIST, then `evaluate --json` reads it back."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from mnistlab.cli import main


def run_cli(*args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "mnistlab", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_train_then_evaluate(mnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--data-dir", str(mnist_root), "--out", str(out), "--epochs", "2", "--batch-size", "128",
        "--set", "data.train_limit=4000", "--set", "data.val_size=1000", "--threads", "1",
    )
    assert proc.returncode == 0, proc.stderr
    # The per-epoch table and the final lines.
    assert "train_loss" in proc.stdout and "val_acc" in proc.stdout
    assert "test accuracy" in proc.stdout and str(out) in proc.stdout
    for name in ("config.toml", "metrics.csv", "summary.json", "best.ckpt", "last.ckpt"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    assert not (out / "run.lock").exists()

    summary = json.loads((out / "summary.json").read_text())
    # 4,000 real training images, 2 epochs of the default model: measured 0.95-0.96 here.
    assert summary["test_accuracy"] >= 0.93
    assert summary["epochs"] == 2 and summary["stop_reason"].startswith("max epochs")
    assert summary["train_seconds"] > 0 and 1 <= summary["best_epoch"] <= 2
    # The machine the seconds came from: the CPU's name and the vector instructions torch uses on it.
    assert summary["cpu"].endswith(f" ({torch.backends.cpu.get_cpu_capability()})") and len(summary["cpu"]) > 8
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]

    proc = run_cli("evaluate", str(out / "best.ckpt"), "--json", "--data-dir", str(mnist_root))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["model"], report["dataset"]) == ("fast", "mnist")
    assert report["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=0)
    assert report["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert len(report["confusion_matrix"]) == 10 and len(report["first_predictions"]) == 10
    assert sum(map(sum, report["confusion_matrix"])) == 10000

    # The text report, in this process (main() is what the console script calls): the process's own exit and
    # output were just checked with --json, and a third interpreter costs its torch import.
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data-dir", str(mnist_root)]) == 0
    text = capsys.readouterr().out
    assert "confusion matrix" in text and "per-class accuracy" in text
    assert text.startswith(f"fast from {out / 'best.ckpt'} (epoch ")  # the file a run folder stands for


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    proc = run_cli("train", "--set", "train.epochs=0", "--out", str(tmp_path / "x"))  # the process: status 2, one line
    assert proc.returncode == 2
    assert proc.stderr == "mnistlab train: error: train.epochs must be greater than zero, got 0\n"
    # the same path in this process (main() is what the console script calls), without a new interpreter each
    assert main(["train", "--model", "nonet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "unknown model 'nonet'; choose one of:" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("cnn", "fast", "lenet", "lenet5", "alexnet", "vgg11", "vgg16", "resnet18", "resnet50"):
        assert f"\n{name} " in out
    assert "MACs/image" in out
