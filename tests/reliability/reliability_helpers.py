"""Helpers for the fault tests: CLI runs in subprocesses, and comparisons of run folders."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mnistlab.training.checkpoint import read_checkpoint


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes((0, 0, 8, array.ndim)) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())
    return path


def small_args(root: Path, *extra: str) -> list[str]:
    """``mnistlab train`` flags for a run of about a second per few epochs on ``mini_root``."""
    return [
        "--data-dir", str(root), "--dataset", "kmnist", "--model", "cnn", "--batch-size", "100", "--threads", "1",
        "--set", "data.train_limit=500", "--set", "data.val_size=300", "--set", "data.download=false",
        "--set", "tensorboard.enabled=false", "--set", "train.eval_batch_size=500", *extra,
    ]


def small_overrides(root: Path, *extra: str) -> list[str]:
    """The same run as :func:`small_args`, as ``--set`` overrides for in-process ``train``."""
    return [
        f"data.dir={root}", "data.dataset=kmnist", "model.name=cnn", "train.batch_size=100", "train.threads=1",
        "data.train_limit=500", "data.val_size=300", "data.download=false", "tensorboard.enabled=false",
        "train.eval_batch_size=500", *extra,
    ]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# Every subprocess runs ``mnistlab.cli.main`` through this prelude, which skips report.html:
# the report is not what these tests check, and its plots cost seconds per finished run.
# Scripts that patch more (torch.save) put their patch between NO_REPORT and MAIN.
NO_REPORT = """
import sys, types
import mnistlab.report
mnistlab.report.write_run_report = lambda *args, **kwargs: types.SimpleNamespace(path="(skipped in tests)")
"""
# Ended as the `mnistlab` command ends (mnistlab.cli.run): main(), then an exit that skips the interpreter's
# teardown; sys.exit(main()) spent 2 s of CPU a process tearing torch down, as long as a run's training here.
MAIN = """
from mnistlab.cli import run
run()
"""


def cli_command(*args: str, patch: str = "") -> list[str]:
    return [sys.executable, "-c", NO_REPORT + patch + MAIN, *args]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``mnistlab ARGS`` in a subprocess, to the end."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, env=ENV)


def start_cli(*args: str, patch: str = "") -> subprocess.Popen:
    """``mnistlab ARGS`` in the background (with ``patch`` run first), stdout read as lines."""
    return subprocess.Popen(
        cli_command(*args, patch=patch), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, bufsize=1
    )


def wait_for_lines(proc: subprocess.Popen, n: int, timeout: float = 120) -> list[str]:
    """Read stdout until ``n`` epoch rows have been printed (or the process ended); returns the lines read."""
    lines, rows, deadline = [], 0, time.monotonic() + timeout
    while rows < n:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {n} epoch rows within {timeout} s; got {lines}")
        line = proc.stdout.readline()
        if not line:  # EOF: the process finished
            break
        lines.append(line)
        rows += is_epoch_row(line)
    return lines


def wait_for_start(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Read stdout up to the line ``training <model> ...``, printed just before the first step."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith("training "):
            return
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"the run did not start within {timeout} s: {finish(proc)}")


def is_epoch_row(line: str) -> bool:
    parts = line.split()
    return len(parts) == 7 and parts[0].isdigit()


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def send(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.kill(proc.pid, signum)
    except ProcessLookupError:
        pass  # it finished already


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between {a} and {b}"


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the wall-clock column."""
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def snapshot(folder: Path) -> dict[str, str]:
    """name -> SHA-256 of every file under ``folder`` (empty if it does not exist)."""
    if not folder.exists():
        return {}
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


SIGNAL_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
