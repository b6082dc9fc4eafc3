"""The public Python API as a notebook user meets it: every exported name, the README's "Python API" example run
as written, the subpackages reachable from a bare ``import mnistlab``, and clear errors for argument mistakes."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mnistlab
import mnistlab.callbacks
import mnistlab.data
import mnistlab.models
from mnistlab import Config, apply_overrides
from mnistlab.config import DataConfig
from mnistlab.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"

CONSTANTS = {"DATASETS", "EPOCH_METRICS"}


def exported():
    for module in (mnistlab, mnistlab.callbacks, mnistlab.data, mnistlab.models):
        for name in module.__all__:
            yield pytest.param(module, name, id=f"{module.__name__}.{name}")


@pytest.mark.parametrize("module, name", list(exported()))
def test_every_exported_name_exists_and_has_its_own_docstring(module, name):
    value = getattr(module, name)
    if name in CONSTANTS:
        return
    doc = value.__doc__
    assert doc and doc.strip(), f"{module.__name__}.{name} has no docstring of its own"
    assert not doc.startswith(f"{name}("), f"{module.__name__}.{name} has only dataclasses' generated docstring"


def test_the_subpackages_are_reachable_from_a_bare_import():
    # A fresh interpreter: in this one the test's own imports have set the attributes already.
    code = (
        "import sys, mnistlab\n"
        "assert 'torch' not in sys.modules, 'import mnistlab imported torch'\n"
        "print(mnistlab.callbacks.EarlyStopping.__name__, mnistlab.config.DataConfig.__name__,\n"
        "      mnistlab.data.load_data.__name__, mnistlab.models.list_models.__name__,\n"
        "      mnistlab.training.fit.__name__, mnistlab.errors.ConfigError.__name__)\n"
        "assert {'callbacks', 'config', 'data', 'models'} <= set(dir(mnistlab))\n"
        "try:\n"
        "    mnistlab.no_such_name\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "EarlyStopping DataConfig load_data list_models fit ConfigError"
    assert "module 'mnistlab' has no attribute 'no_such_name'" in out.stdout


def _missing_devices() -> list:
    if not torch.cuda.is_available():
        return ["gpu", "cuda:0", torch.device("cuda")]
    return ["gpu", f"cuda:{torch.cuda.device_count()}"]


@pytest.mark.parametrize("device", _missing_devices(), ids=str)
@pytest.mark.parametrize("load", [mnistlab.data.load_data, mnistlab.data.load_test], ids=lambda f: f.__name__)
def test_load_data_refuses_a_device_before_reading_any_file(tmp_path, load, device):
    # An empty data folder: before the fix "gpu" got there and failed as a DataError on the missing files (with
    # the files, torch's RuntimeError "Expected one of cpu, cuda, ..." once they were all read and verified).
    cfg = DataConfig(dir=str(tmp_path), download=False)
    with pytest.raises(ConfigError, match=rf"^{load.__name__}\(device\) = '{device}'"):
        load(cfg, device)


def test_load_data_still_takes_cpu_and_auto(mnist_root):
    cfg = DataConfig(dir=str(mnist_root), download=False, train_limit=200, val_size=100)
    for device in ("cpu", "auto", torch.device("cpu")):
        assert mnistlab.load_data(cfg, device).train.images.dtype == torch.uint8


@pytest.mark.parametrize("function", [mnistlab.callbacks.build_callbacks, mnistlab.callbacks.flat_config],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("section", ["train", "early_stopping"])
def test_config_functions_refuse_a_section_with_a_clear_error(function, section):
    args = (getattr(Config(), section),) + ((None,) if function is mnistlab.callbacks.build_callbacks else ())
    name = type(getattr(Config(), section)).__name__
    with pytest.raises(TypeError, match=rf"^{function.__name__}\(\) takes the whole mnistlab.Config .*got {name}$"):
        function(*args)


def _readme_python_api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _substitute(code: str, old: str, new: str) -> str:
    assert old in code, f"the README's Python API example no longer has {old!r}: update this test"
    return code.replace(old, new)


def test_the_readmes_python_api_example_runs_as_written(mnist_root, tmp_path, monkeypatch, no_report,
                                                        export_extra):  # the example exports to ONNX
    monkeypatch.chdir(tmp_path)
    small = ["data.train_limit=1000", "data.val_size=500", "train.epochs=1", f"data.dir={mnist_root}",
             "data.download=false", "tensorboard.enabled=false"]
    run = mnistlab.train(apply_overrides(Config(), small + ["model.name=cnn"]), out=tmp_path / "runs" / "r",
                         quiet=True, report=False)
    code = _readme_python_api_example()
    # Only the sizes (small, real MNIST from the test data) and the run folder, which the README leaves to the reader
    code = _substitute(code, '["data.train_limit=5000", "train.epochs=1"]', repr(small))
    code = _substitute(code, "runs/<run>/best.ckpt", str(run.run_dir / "best.ckpt"))
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert namespace["result"].epochs == 1 and namespace["result"].stopped_by == "max_epochs"
    accuracy = mnistlab.evaluate(namespace["result"].model, namespace["data"].test).accuracy
    assert 0.2 < accuracy <= 1, accuracy  # better than chance after four steps
    assert (tmp_path / "model.onnx").stat().st_size > 0
    assert namespace["model"].training is False  # load_model gives it in eval mode



def test_the_types_the_data_loaders_return_are_exported_with_them():
    # load_test was in mnistlab.data.__all__ and its ScoringSet was not: `from mnistlab.data import *` left it out
    for load in (mnistlab.data.load_data, mnistlab.data.load_test):
        returned = inspect.signature(load).return_annotation
        returned = returned if isinstance(returned, str) else returned.__name__
        assert returned in mnistlab.data.__all__, f"{load.__name__} returns {returned}, not in mnistlab.data.__all__"
