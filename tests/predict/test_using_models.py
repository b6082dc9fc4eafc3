"""Using trained models: what an audit of `predict`, `evaluate` and `ensemble` found; each test failed before its
fix."""

from __future__ import annotations

import json
import os

import pytest
import torch

import mnistlab.predict as predict_module
from mnistlab.cli import main
from mnistlab.config import Config, config_to_dict
from mnistlab.data.datasets import Split
from mnistlab.errors import CheckpointError, ConfigError, MnistlabError
from mnistlab.models import build_model
from mnistlab.predict import ImageFileError, predict_files, read_grayscale
from mnistlab.training.checkpoint import read_checkpoint, save_checkpoint
from mnistlab.training.ensemble import evaluate_ensemble
from mnistlab.training.evaluate import evaluate


def _checkpoint_of_other_images(path, in_channels: int, size: int):
    """A checkpoint, as the Python API saves one, of a cnn made for ``size`` x ``size`` images of ``in_channels``."""
    model = build_model("cnn", num_classes=10, in_channels=in_channels, image_size=(size, size))
    cfg = config_to_dict(Config())
    cfg["model"]["name"] = "cnn"
    return save_checkpoint(path, {"model_name": "cnn", "config": cfg, "model": model.state_dict(), "num_classes": 10,
                                  "in_channels": in_channels, "image_size": [size, size],
                                  "classes": [str(i) for i in range(10)], "dataset": "mnist", "epoch": 1})


@pytest.mark.parametrize("in_channels, size, shape", [(3, 28, "28x28 images of 3 channels"),
                                                      (1, 32, "32x32 images of 1 channel")])
def test_a_model_of_other_images_than_predicts_is_refused_in_one_line(tmp_path, drawn_digits, capsys, monkeypatch,
                                                                       in_channels, size, shape):
    # Its forward pass failed on the 1x28x28 inputs with a traceback ("mat1 and mat2 shapes cannot be multiplied",
    # "images must be a batch (N, 3, H, W)"), after every image had been read.
    ckpt = _checkpoint_of_other_images(tmp_path / "other.ckpt", in_channels, size)
    read, real = [], predict_module.read_grayscale
    monkeypatch.setattr(predict_module, "read_grayscale", lambda path: read.append(path) or real(path))
    assert main(["predict", str(ckpt), str(drawn_digits[7, "paper.png"])]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"mnistlab predict: error: the model takes {shape}, and predict makes 28x28 grayscale ones, as the MNIST "
        "family's are: it cannot classify image files with this model\n")
    assert read == []  # refused before any image was read
    model = build_model("cnn", in_channels=in_channels, image_size=(size, size))
    with pytest.raises(CheckpointError, match=shape):
        predict_files(model, [drawn_digits[7, "paper.png"]])


def test_a_pipe_a_link_to_nothing_and_a_dash_are_said_to_be_what_they_are(tmp_path, monkeypatch):
    # A pipe (what `predict RUN <(cat seven.png)` passes) was "empty (0 bytes)", a link whose target had gone
    # "does not exist" (the link does), and "-" (stdin elsewhere) "does not exist" without a word of why.
    os.mkfifo(tmp_path / "pipe.png")  # never opened: a reader of a pipe with no writer would wait forever
    with pytest.raises(ImageFileError, match=r"pipe.png is not a regular file \(a pipe, a device or a socket\): "
                                             r"predict reads image files; save the image to a file first$"):
        read_grayscale(tmp_path / "pipe.png")
    (tmp_path / "seven.png").symlink_to("gone.png")
    with pytest.raises(ImageFileError, match=r"seven.png is a link to gone.png, which does not exist$"):
        read_grayscale(tmp_path / "seven.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageFileError, match=r"^- does not exist \(predict reads image files, not standard input\)$"):
        read_grayscale("-")


def test_save_preprocessed_naming_a_file_is_refused_before_the_images_are_read(digit_model, tmp_path, monkeypatch):
    # Every image was read and preprocessed (seconds each for a photo) before the folder was found to be a file.
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setattr(predict_module, "read_grayscale", lambda path: pytest.fail("an image was read"))
    with pytest.raises(MnistlabError, match=r"--save-preprocessed .*notes.txt is a file, not a folder: give a "
                                            r"folder's name"):
        predict_files(digit_model, [tmp_path / "seven.png"], save_preprocessed=tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["evaluate", "ensemble"])
def test_an_empty_data_dir_is_refused_not_taken_for_the_flag_left_out(command, digit_run, capsys):
    # --data-dir "" (a shell variable that was not set) tested the model on the run's own data folder, silently.
    assert main([command, str(digit_run), "--data-dir", ""]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (f"mnistlab {command}: error: --data-dir needs a folder; leave it "
                                                   "out for the data folder the checkpoint's run used\n")
    with pytest.raises(ConfigError, match="--data-dir needs a folder"):
        evaluate_ensemble([digit_run], data_dir=" ")


def test_evaluate_json_says_where_inside_an_epoch_a_checkpoint_was_saved(digit_run, mnist_root, tmp_path, capsys):
    # The text said "inside epoch 1, after batch 3"; --json said "epoch": 0 alone, as if nothing had been trained.
    payload = read_checkpoint(digit_run / "best.ckpt")
    payload["epoch"], payload["batch"] = 0, 3  # as Ctrl-C in the first epoch leaves last.ckpt
    inside = save_checkpoint(tmp_path / "inside.ckpt", payload)
    for ckpt, epoch, batch in ((inside, 0, 3), (digit_run / "best.ckpt", read_checkpoint(digit_run)["epoch"], None)):
        assert main(["evaluate", str(ckpt), "--data-dir", str(mnist_root), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["epoch"], report["batch"]) == (epoch, batch)


def test_evaluate_refuses_a_model_with_more_outputs_than_the_classes_asked_for():
    # A prediction of class 11 by a 12-output model, scored as 10 classes, broke the confusion matrix after the
    # whole split had been scored: RuntimeError "shape '[10, 10]' is invalid for input of size 112".
    model = build_model("cnn", num_classes=12)
    with torch.no_grad():
        model.classifier[-1].bias[11] = 1e3  # every image is predicted as class 11
    split = Split(images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8), labels=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(ConfigError, match=r"num_classes is 10, but the model has 12 outputs: give the model's class "
                                          r"count, or leave num_classes out"):
        evaluate(model, split, num_classes=10)
    assert evaluate(model, split).confusion.shape == (12, 12)  # its own class count: scored


def test_the_arguments_given_the_wrong_way_round_are_told_which_comes_first(digit_run, drawn_digits, capsys):
    # `predict seven.png runs/x` said only "seven.png is not a readable checkpoint".
    image = drawn_digits[7, "paper.png"]
    assert main(["predict", str(image), str(digit_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mnistlab predict: error: {image}") and err.endswith(
        " (the checkpoint or run folder comes first: mnistlab predict RUN IMAGE...)\n"), err
    assert main(["predict", str(image), str(drawn_digits[1, "paper.png"])]) == 2  # no run among them: no such hint
    assert "comes first" not in capsys.readouterr().err
