"""Using a trained model: what audit 117 of `predict` and `export` found; each test failed before its fix."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mnistlab.errors import MnistlabError
from mnistlab.predict import predict_files, preprocess
from mnistlab.training.checkpoint import read_checkpoint, save_checkpoint


@pytest.fixture
def bar(tmp_path):
    """A dark vertical bar (a 1) on white paper, as a PNG."""
    img = np.full((60, 60), 255, dtype=np.uint8)
    img[10:50, 26:33] = 0
    path = tmp_path / "one.png"
    Image.fromarray(img).save(path)
    return path


def test_one_path_given_alone_is_one_file_not_a_file_per_character(digit_model, bar):
    # predict_files(model, "one.png") read "/", "t", "m", "p", ... as 30-odd files that did not exist.
    for given in (str(bar), bar):
        results = predict_files(digit_model, given)
        assert [(r.file, r.error) for r in results] == [(str(bar), None)]
        assert results[0].name == "1"


def test_a_top_k_that_is_not_a_whole_number_is_one_error(digit_model, bar):
    # top_k=2.0 was a TypeError from inside torch's topk (and "3" one from a comparison)
    for bad in (2.0, "3", True):
        with pytest.raises(MnistlabError, match="--top-k must be a whole number"):
            predict_files(digit_model, [bar], top_k=bad)
    assert len(predict_files(digit_model, [bar], top_k=np.int64(2))[0].top_k) == 2


def test_outputs_that_are_not_finite_give_an_error_not_a_class(digit_model, bar):
    # A model whose outputs overflow printed "one.png: 8  nan%   top 3: 8 nan%, 6 nan%, 7 nan%" (exit 0): the top
    # class of NaNs is no prediction.
    model = copy.deepcopy(digit_model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e30)  # finite weights (a checkpoint may hold them) whose products overflow float32
    [result] = predict_files(model, [bar])
    assert result.error is not None and "not finite" in result.error and str(bar) in result.error
    assert result.top_k == [] and set(result.to_dict()) == {"file", "error"}
    with pytest.raises(ValueError, match="not finite"):
        result.index


def test_preprocess_refuses_a_dataset_it_has_no_recipe_for_and_a_colour_array():
    img = np.ones((60, 40), dtype=np.float32)
    img[10:50, 15:25] = 0
    # "fashion" silently got MNIST's 20x20 box and centre of mass instead of Fashion-MNIST's 28 and centred box
    with pytest.raises(MnistlabError, match="unknown dataset 'fashion'.*fashion-mnist"):
        preprocess(img, "fashion")
    assert preprocess(img, "fashion-mnist").shape == (28, 28)
    # an RGB array was "too many values to unpack"
    with pytest.raises(MnistlabError, match=r"2-D grayscale image .* shape \(60, 40, 3\)"):
        preprocess(np.stack([img] * 3, -1))


def test_a_tilde_in_save_preprocessed_is_the_home_folder(digit_model, bar, tmp_path, monkeypatch):
    # --save-preprocessed=~/inputs arrives unexpanded (the shell expands ~ only at a word's start): a folder named
    # "~" was made in the current folder.
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir(), here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    [result] = predict_files(digit_model, [bar], save_preprocessed="~/inputs")
    assert result.saved_as == str(home / "inputs" / "one.png") and (home / "inputs" / "one.png").is_file()
    assert list(here.iterdir()) == []


def test_a_tilde_in_the_onnx_file_name_is_the_home_folder(digit_run, tmp_path, monkeypatch, export_extra):
    from mnistlab.export import export_checkpoint

    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir(), here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    result = export_checkpoint(digit_run, "~/models/digits.onnx", check=False)  # as --out=~/models/digits.onnx
    assert result.path == home / "models" / "digits.onnx" and result.path.is_file()
    assert list(here.iterdir()) == []  # there was a ./~/models/digits.onnx


def test_the_metadata_of_a_checkpoint_saved_inside_an_epoch_says_so(digit_run, tmp_path, export_extra):
    from mnistlab.export import export_checkpoint

    # "mnistlab.epoch": "0" alone said nothing had been trained, of a last.ckpt saved by Ctrl-C after 3 batches
    payload = read_checkpoint(digit_run / "best.ckpt")
    payload["epoch"], payload["batch"] = 0, 3
    inside = save_checkpoint(tmp_path / "inside.ckpt", payload)
    for ckpt, epoch, batch in ((inside, "0", "3"), (digit_run / "best.ckpt", str(read_checkpoint(digit_run)["epoch"]),
                                                     None)):
        result = export_checkpoint(ckpt, tmp_path / "out.onnx", check=False)
        props = {p.key: p.value for p in export_extra.onnx.load(str(result.path)).metadata_props}
        assert (props["mnistlab.epoch"], props.get("mnistlab.batch")) == (epoch, batch)
        assert json.loads(json.dumps(result.to_dict()))["metadata"].get("mnistlab.batch") == batch


def test_a_model_of_a_dataset_without_a_recipe_is_refused_before_reading_images(digit_model, bar, monkeypatch):
    from mnistlab.errors import CheckpointError

    model = copy.deepcopy(digit_model)
    model.dataset = "emnist"  # MNIST's recipe and class names were used for it without a word
    read = []
    monkeypatch.setattr("mnistlab.predict.read_grayscale", lambda p: read.append(p))
    with pytest.raises(CheckpointError, match="trained on 'emnist'.*mnist, kmnist, fashion-mnist"):
        predict_files(model, [bar])
    assert read == []
