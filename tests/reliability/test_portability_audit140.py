"""Audit 140: a student's laptop is macOS or Windows. The platform is simulated here (monkeypatch), on Linux."""

from __future__ import annotations

import ctypes
import importlib
import os
import sys

import pytest
import torch

from mnistlab import bench
from mnistlab.errors import ConfigError, RunDirError
from mnistlab.training import distributed, run

fit = importlib.import_module("mnistlab.training.fit")  # the package's `fit` is the function


class _FakeKernel32:
    """Windows' kernel32 as process_alive uses it: ``live`` pids run, ``ended`` ones have exited but are still
    open somewhere, ``foreign`` ones belong to another user; any other pid does not exist."""

    def __init__(self, live=(), ended=(), foreign=()):
        self.live, self.ended, self.foreign = set(live), set(ended), set(foreign)
        self.last_error, self.open_handles = 0, set()

    def OpenProcess(self, access, inherit, pid):
        if pid in self.foreign:
            self.last_error = 5  # ERROR_ACCESS_DENIED
            return 0
        if pid not in self.live | self.ended:
            self.last_error = 87  # ERROR_INVALID_PARAMETER: no such process
            return 0
        self.open_handles.add(pid)
        return pid

    def GetExitCodeProcess(self, handle, code_ref):
        code_ref._obj.value = 259 if handle in self.live else 0  # STILL_ACTIVE
        return 1

    def CloseHandle(self, handle):
        self.open_handles.discard(handle)
        return 1


def test_process_alive_on_windows_never_kills_the_process_it_asks_about(monkeypatch):
    # On Windows os.kill(pid, 0) is TerminateProcess(pid, 0): checking a lock ended the run holding it, and a
    # pid that was gone raised OSError [WinError 87], a traceback from `mnistlab train`.
    def windows_kill(pid, sig):
        raise AssertionError(f"os.kill({pid}, {sig}) on Windows terminates process {pid}")

    kernel32 = _FakeKernel32(live={100}, ended={200}, foreign={300})
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", windows_kill)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: kernel32, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: kernel32.last_error, raising=False)
    assert run.process_alive(100) is True
    assert run.process_alive(200) is False  # exited, its handle still held elsewhere
    assert run.process_alive(300) is True  # another user's: exists
    assert run.process_alive(400) is False  # gone
    assert kernel32.open_handles == set()


def test_a_stale_lock_on_windows_is_taken_over_without_a_traceback(monkeypatch, tmp_path):
    kernel32 = _FakeKernel32(live={os.getpid()})
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", lambda pid, sig: (_ for _ in ()).throw(OSError(22, "[WinError 87]")))
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: kernel32, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: kernel32.last_error, raising=False)
    (tmp_path / "run.lock").write_text("999999")  # a run killed long ago (Windows: no start time)
    with run.RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / "run.lock").exists()


def test_a_stale_lock_another_process_holds_open_on_windows_is_one_error(monkeypatch, tmp_path):
    # Windows refuses to rename a file another process has open (one judging the same stale lock): the
    # PermissionError came out of RunLock as a traceback.
    (tmp_path / "run.lock").write_text("999999")  # a run killed long ago
    monkeypatch.setattr(run, "process_alive", lambda pid: False)
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(PermissionError(13, "Access is denied")))
    with pytest.raises(RunDirError, match=r"could not take the lock .*; if no mnistlab run uses .*, delete the lock"):
        with run.RunLock(tmp_path):
            pass


def test_nproc_on_windows_is_refused_in_one_line(monkeypatch):
    # The launcher passed Ctrl-C on with Popen.send_signal(SIGINT), which on Windows raises ValueError
    # ("Unsupported signal") inside the signal handler; each worker's join needs os.set_blocking on a pipe.
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(ConfigError, match=r"^--nproc 2: multi-process training runs on Linux or macOS, not Windows"):
        distributed.check_processes(2, torch.device("cpu"), 100)
    distributed.check_processes(1, torch.device("cpu"), 100)  # one process trains as anywhere


def test_matmul_rate_on_mps_waits_for_the_product(monkeypatch):
    # An MPS matmul returns once queued: timed without a synchronize, the "rate" was the launch's.
    synced = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: synced.append(True))
    bench._sync(torch.device("mps"))
    assert synced == [True]


def test_the_mps_random_state_is_saved_and_put_back(monkeypatch):
    # Augmentation and dropout draw from the device's generator: on a Mac's "mps" that is torch.mps's, and a
    # resumed run drew other numbers than the run not interrupted.
    state = {"mps": torch.arange(8, dtype=torch.uint8)}
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state["mps"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: state.update(mps=s.clone()))
    saved = fit._rng_state()
    assert torch.equal(saved["mps"], torch.arange(8, dtype=torch.uint8))
    state["mps"] = torch.zeros(8, dtype=torch.uint8)  # the generator moved on
    fit._set_rng_state(saved)
    assert torch.equal(state["mps"], torch.arange(8, dtype=torch.uint8))
    fit._set_rng_state({k: v for k, v in saved.items() if k != "mps"})  # a checkpoint written without MPS
    assert torch.equal(state["mps"], torch.arange(8, dtype=torch.uint8))


def test_the_machine_line_of_a_run_on_mps_says_so():
    # bench's tables headed a run on a Mac's GPU with the CPU alone, as if the numbers were the CPU's
    assert bench.machine_description(torch.device("mps")).endswith("; GPU: the chip's own, through MPS")
    assert "GPU" not in bench.machine_description(torch.device("cpu"))


def test_a_checkpoint_is_written_over_one_another_process_has_open_on_windows(monkeypatch, tmp_path):
    # Windows refuses to replace a file another process has open (a reader, an antivirus scan): the run stopped
    # with "cannot write checkpoint" over a moment's scan. It is tried again; elsewhere the error stands at once.
    from mnistlab.training import checkpoint

    real, refused = os.replace, []

    def busy_twice(src, dst):
        if len(refused) < 2:
            refused.append(dst)
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real(src, dst)

    monkeypatch.setattr(os, "replace", busy_twice)
    monkeypatch.setattr(sys, "platform", "win32")
    checkpoint.atomic_write(tmp_path / "last.ckpt", lambda f: f.write(b"new"))
    assert (tmp_path / "last.ckpt").read_bytes() == b"new" and len(refused) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left
    monkeypatch.setattr(sys, "platform", "linux")
    refused.clear()
    with pytest.raises(PermissionError):
        checkpoint.atomic_write(tmp_path / "best.ckpt", lambda f: f.write(b"x"))
    assert len(refused) == 1 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
