"""The Python API as a notebook uses it: a Ctrl-C in mid-fit, the model as train gives it back, folder names
and configs of the wrong kind."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from mnistlab import Callback, Config, TrainingInterrupted, fit, load_data, train
from mnistlab.errors import ConfigError

from test_api_misuse import small_model, tiny_cfg  # the same small runs


class CtrlC(Callback):
    """Jupyter's "interrupt kernel": a SIGINT to the process, here as the first epoch begins."""

    def on_epoch_begin(self, epoch, trainer):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_in_mid_fit_leaves_the_model_ready_to_predict_and_says_where_it_stopped(mnist_small, mnist_root):
    # The model was left in train mode (its predictions drew dropout), and the exception said only "SIGINT".
    model = small_model(mnist_small)
    with pytest.raises(TrainingInterrupted) as caught:
        fit(model, mnist_small, tiny_cfg(mnist_root, "train.epochs=2"), callbacks=[CtrlC()])
    assert not model.training
    assert str(caught.value).startswith("interrupted by SIGINT at epoch 1, batch 1 of ")
    assert "the model keeps the weights trained so far" in str(caught.value)
    # and a second call in the same process trains as usual
    assert fit(model, mnist_small, tiny_cfg(mnist_root)).stopped_by == "max_epochs"
    assert not model.training


def test_train_gives_its_final_model_back_in_eval_mode(mnist_root, tmp_path):
    # fit() gave it back in eval mode, train() in train mode (the last validation put it back): a notebook's
    # result.fit.model(x) drew dropout.
    result = train(tiny_cfg(mnist_root, "model.dropout=0.5"), out=tmp_path / "run", quiet=True, report=False)
    model = result.fit.model
    assert not model.training
    x = torch.zeros(4, 1, 28, 28)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("call", ["fit run_dir", "train out"])
def test_an_empty_folder_name_is_refused_not_taken_for_the_current_folder(mnist_small, mnist_root, tmp_path,
                                                                            monkeypatch, call):
    # Path("") is ".": fit(run_dir="") wrote last.ckpt among the notebook's files, and train(out="") made its run
    # there (the CLI refuses --out "").
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg(mnist_root)
    with pytest.raises(ConfigError, match="names no folder"):
        if call == "fit run_dir":
            fit(small_model(mnist_small), mnist_small, cfg, run_dir="")
        else:
            train(cfg, out=" ", quiet=True, report=False)
    assert list(tmp_path.iterdir()) == []


def test_load_data_given_the_whole_config_says_to_pass_its_data_section():
    # load_data(cfg) for load_data(cfg.data) failed with "AttributeError: 'Config' object has no attribute
    # 'dataset'", a dict or a dataset name likewise.
    with pytest.raises(TypeError, match=r"pass its data section, load_data\(cfg.data\)"):
        load_data(Config())
    with pytest.raises(TypeError, match="takes a DataConfig .* got dict"):
        load_data({"dataset": "mnist"})
