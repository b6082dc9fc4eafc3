"""The model zoo. Importing this package registers every family."""

from . import alexnet, cnn, lenet, resnet, vgg  # noqa: F401  (registration side effects)
from ._registry import build_model, check_options_taken, list_models, model_options, register
from .base import Net
from .summary import count_macs, count_parameters, format_layer_table, layer_table

__all__ = [
    "Net",
    "build_model",
    "check_options_taken",
    "list_models",
    "model_options",
    "register",
    "count_macs",
    "count_parameters",
    "format_layer_table",
    "layer_table",
]
