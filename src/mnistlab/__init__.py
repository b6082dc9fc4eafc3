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

from .callbacks import Callback
from .config import Config, apply_overrides, load_config
from .data import load_data
from .errors import CheckpointError, ConfigError, DataError, MnistlabError
from .export import export_onnx
from .models import build_model, list_models
from .training import FitResult, TrainingInterrupted, evaluate, fit, load_model, train

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "FitResult",
    "MnistlabError",
    "TrainingInterrupted",
    "apply_overrides",
    "build_model",
    "evaluate",
    "export_onnx",
    "fit",
    "list_models",
    "load_config",
    "load_data",
    "load_model",
    "train",
]
