"""The model zoo. Importing this package registers every family."""

from . import alexnet, cnn, lenet, resnet, vgg  # noqa: F401  (registration side effects)
from ._registry import build_model, list_models, model_options, register
from .base import Net

__all__ = ["Net", "build_model", "list_models", "model_options", "register"]
