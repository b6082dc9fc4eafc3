"""mnistlab: train, compare and use convolutional networks on MNIST-family images.

The Python API, for notebooks and scripts::

    from mnistlab import Config, apply_overrides, build_model, load_data, fit, evaluate, load_model

    cfg = apply_overrides(Config(), ["data.train_limit=5000", "train.epochs=1"])
    data = load_data(cfg.data)                      # uint8 tensors, train/val/test
    model = build_model("cnn", mean=data.mean, std=data.std)
    result = fit(model, data, cfg)                  # trains in memory, no files
    print(evaluate(result.model, data.test).accuracy)

``train(cfg)`` does a whole run with a run folder, as ``mnistlab train`` does;
``load_model("runs/<run>/best.ckpt")`` gives the trained model back, and
``export_onnx(model, "model.onnx", name="cnn")`` writes it as ONNX (``mnistlab[export]``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Each name is imported on first use (PEP 562), so that importing the package does not import torch:
# `mnistlab --help` answers at once, and a Ctrl-C in the seconds torch takes to import reaches the CLI's
# handler ("interrupted by SIGINT") rather than ending in a traceback from inside torch.
_HOMES = {
    "Callback": ".callbacks",
    "CheckpointError": ".errors",
    "Config": ".config",
    "ConfigError": ".errors",
    "DataError": ".errors",
    "FitResult": ".training",
    "MnistlabError": ".errors",
    "TrainingInterrupted": ".training",
    "apply_overrides": ".config",
    "build_model": ".models",
    "evaluate": ".training",
    "export_onnx": ".export",
    "fit": ".training",
    "list_models": ".models",
    "load_config": ".config",
    "load_data": ".data",
    "load_model": ".training",
    "train": ".training",
}

__all__ = sorted(_HOMES)

# The subpackages, imported on first use too: `import mnistlab; mnistlab.callbacks.EarlyStopping(...)` (as
# `keras.callbacks.EarlyStopping`) was "module 'mnistlab' has no attribute 'callbacks'" unless something had
# imported it before, and so was `mnistlab.config.DataConfig`, which mnistlab's own error messages suggest.
_SUBMODULES = ("callbacks", "config", "data", "errors", "export", "models", "predict", "report", "sweep", "training")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # importing it sets it as an attribute here
    if name not in _HOMES:
        raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, *_SUBMODULES})


if TYPE_CHECKING:  # for type checkers and editors, which do not run __getattr__
    from .callbacks import Callback
    from .config import Config, apply_overrides, load_config
    from .data import load_data
    from .errors import CheckpointError, ConfigError, DataError, MnistlabError
    from .export import export_onnx
    from .models import build_model, list_models
    from .training import FitResult, TrainingInterrupted, evaluate, fit, load_model, train
