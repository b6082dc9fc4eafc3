"""A new user's first hour with the command line (audit 123): the README's commands and their obvious variations."""

from __future__ import annotations

import json

import pytest

from mnistlab.cli import main


@pytest.fixture
def run(one_step_run):
    """A finished run of one training step (read-only)."""
    return one_step_run


@pytest.fixture
def digits(tmp_path):
    """Two small drawings of digits as PNG files."""
    from PIL import Image, ImageDraw

    files = []
    for name, stroke in (("seven.png", [(30, 20), (70, 20), (40, 90)]), ("one.png", [(50, 15), (50, 90)])):
        image = Image.new("L", (100, 100), 255)
        ImageDraw.Draw(image).line(stroke, fill=0, width=8)
        image.save(tmp_path / name)
        files.append(str(tmp_path / name))
    return files


def test_predict_takes_its_images_before_and_after_a_flag(run, digits, capsys):
    # `predict RUN a.png --top-k 1 b.png` was refused: "unrecognized arguments: b.png" (argparse gives a list
    # argument only the words before the first flag).
    seven, one = digits
    assert main(["predict", str(run), seven, "--top-k", "1", "--json", one]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [seven, one]
    assert all(len(r["top_k"]) == 1 for r in results)


def test_compare_takes_its_runs_before_and_after_a_flag(run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run, other)
    assert main(["compare", str(run), "--json", "--plot", str(tmp_path / "c.png"), str(other)]) == 0
    assert sorted(r["run"] for r in json.loads(capsys.readouterr().out)) == sorted([str(run), str(other)])


def test_a_word_no_command_takes_is_still_refused(run, capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's errors end the process
        main(["evaluate", str(run), "--json", "extra"])
    assert stop.value.code == 2
    assert "mnistlab evaluate: error: unrecognized arguments: extra" in capsys.readouterr().err


def test_predict_refuses_an_empty_image_name(run, digits, capsys):
    # `predict RUN "$UNSET"` said ". is a folder, not an image file" (a name the user never typed) and exited 1,
    # as for a file that could not be read; the README says an empty value is an error (exit status 2).
    assert main(["predict", str(run), digits[0], ""]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "mnistlab predict: error: IMAGE needs an image file, got an empty name"
    assert captured.out == ""


def test_models_details_names_the_dataset_of_its_config(tmp_path, capsys):
    # `models --details --config F` said "(mnist)" for a config of KMNIST: the label came from --dataset alone
    config = tmp_path / "km.toml"
    config.write_text('[data]\ndataset = "kmnist"\n[model]\nname = "cnn"\n')
    assert main(["models", "--details", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("model cnn: input 1x28x28 (kmnist), 10 classes")
    assert main(["models", "--details", "--config", str(config), "--dataset", "fashion-mnist"]) == 0
    assert capsys.readouterr().out.startswith("model cnn: input 1x28x28 (fashion-mnist)")  # the flag wins
