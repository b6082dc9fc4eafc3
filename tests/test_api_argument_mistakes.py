"""The argument mistakes a notebook user makes are one clear error naming what to pass, not a traceback from deep
inside (each was: an AttributeError, a TypeError from pathlib, torch's device list, "unknown model ModelConfig")."""

import pytest
import torch

import mnistlab
from mnistlab import Config
from mnistlab.callbacks import early_stopping_from_config
from mnistlab.errors import ConfigError


@pytest.mark.parametrize("call, error, message", [
    (lambda: mnistlab.build_model(Config().model), TypeError, r"build_model\(\) takes a model name such as 'cnn', "
     r"got ModelConfig; for a config's \[model\] section: build_model\(cfg.model.name, \*\*cfg.model.options\(\)\)"),
    (lambda: mnistlab.apply_overrides(Config().train, ["train.epochs=2"]), TypeError,
     r"apply_overrides\(\) takes the whole Config .*, got TrainConfig"),
    (lambda: mnistlab.apply_overrides(Config(), None), ConfigError, "overrides must be a list .* got None"),
    (lambda: mnistlab.load_config(Config()), TypeError, r"load_config\(\) takes a TOML file's path, got Config"),
    (lambda: early_stopping_from_config(Config()), TypeError,
     r"takes the \[early_stopping\] section \(cfg.early_stopping\), got Config"),
    (lambda: mnistlab.evaluate("runs/x/best.ckpt", None), TypeError,
     r"evaluate\(\) takes a model .*, got str; for a checkpoint, evaluate\(load_model\(path\), ...\)"),
    (lambda: mnistlab.load_model(torch.nn.Linear(2, 2)), TypeError, "got a model"),
    (lambda: mnistlab.load_model("runs/x", device="gpu"), ConfigError,
     r"load_model\(device\) = 'gpu' is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (lambda: mnistlab.load_data(Config().data, device="gpu"), ConfigError, r"load_data\(device\) = 'gpu' is not a"),
])
def test_a_mistaken_argument_is_one_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_cuda_device_this_machine_has_not_is_refused_before_any_file_is_read(tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 without CUDA)
    for device in (missing, torch.device(missing)):
        with pytest.raises(ConfigError, match=rf"load_model\(device\) = '{missing}' but this machine has"):
            mnistlab.load_model(tmp_path / "none.ckpt", device=device)  # the file does not exist: never read
        with pytest.raises(ConfigError, match=rf"load_data\(device\) = '{missing}' but this machine has"):
            mnistlab.load_data(mnistlab.config.DataConfig(dir=str(tmp_path), download=False), device=device)
