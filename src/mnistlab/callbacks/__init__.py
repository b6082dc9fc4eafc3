"""Callbacks: the API (base.py) and one file per callback."""

from .base import Callback, CallbackList, TrainerHandle

__all__ = ["Callback", "CallbackList", "TrainerHandle"]
