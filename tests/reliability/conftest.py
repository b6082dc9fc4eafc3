"""Fixtures for the fault tests: a small copy of real MNIST.

Most tests here run whole trainings, many as ``mnistlab train`` subprocesses that
get killed. To keep each run at a second or two, they train on ``mini_root``:
the first 2,000 training and 500 test images of real MNIST, written in the
KMNIST layout (whose raw files have no published MD5, so cut files pass the
strict IDX checks). Tests about the real files themselves use ``mnist_root``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistlab.data import read_idx
from reliability_helpers import write_idx

N_TRAIN, N_TEST = 2000, 500


@pytest.fixture(scope="session")
def mini_root(mnist_root, tmp_path_factory) -> Path:
    """A data root whose ``kmnist`` is real MNIST cut to 2,000 train / 500 test images (read-only: copy first)."""
    root = tmp_path_factory.mktemp("mini-mnist")
    src, raw = mnist_root / "MNIST" / "raw", root / "KMNIST" / "raw"
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", read_idx(src / f"{prefix}-images-idx3-ubyte", 3)[:n].numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", read_idx(src / f"{prefix}-labels-idx1-ubyte", 1)[:n].numpy())
    return root


@pytest.fixture(autouse=True)
def _no_report(no_report):
    """In-process runs skip report.html (the shared ``no_report`` fixture).

    Subprocess runs skip it the same way, through ``reliability_helpers.NO_REPORT``.
    """


@pytest.fixture(autouse=True)
def _drop_log_handlers():
    """``mnistlab train`` run in this process adds a handler to the ``mnistlab`` logger; remove it afterwards."""
    import logging

    log = logging.getLogger("mnistlab")
    handlers = list(log.handlers)
    yield
    for h in log.handlers[:]:
        if h not in handlers:
            log.removeHandler(h)
