"""The ``mnistlab`` process itself: what importing the package costs, how the command exits, a Ctrl-C at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mnistlab


def python(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, **kw)


def test_importing_the_package_imports_no_torch_and_every_name_is_there_on_use():
    # `mnistlab --help` took 5 s, importing torch for nothing; a Ctrl-C in that time was a traceback.
    proc = python("import sys, mnistlab.cli; mnistlab.cli._parser(); print('torch' in sys.modules)")
    assert proc.stdout == "False\n", proc.stderr
    assert set(mnistlab.__all__) <= set(dir(mnistlab))
    for name in mnistlab.__all__:
        assert getattr(mnistlab, name).__name__ == name
    with pytest.raises(AttributeError, match="has no attribute 'Fit'"):
        mnistlab.Fit  # noqa: B018
    from mnistlab import Config, fit
    from mnistlab.config import Config as config_class

    assert Config is config_class and fit is mnistlab.training.fit  # the package's fit(), not its module


# run() around a stand-in for main() that prints a line and returns the status given: run()'s own part.
EXIT = """
import atexit, io, os, sys, threading, time
from mnistlab import cli

class Full(io.RawIOBase):
    def writable(self):
        return True

    def write(self, b):
        raise OSError(28, "No space left on device")

if os.environ.get("FULL_STDOUT"):  # as a file on a full disk: the output waits in the buffer for the last flush
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(Full(), 1 << 16))
atexit.register(lambda: print("atexit handler ran", flush=False))
def late():
    threading.main_thread().join()  # returns once the main thread's code is done, as the interpreter exits
    time.sleep(0.5)
    print("other thread ended", flush=False)
threading.Thread(target=late).start()
cli.main = lambda: print("main's output", flush=False) or int(sys.argv[1])
cli.run()
print("not reached")
"""


@pytest.mark.parametrize("status", [0, 2, 130])
def test_the_command_exits_with_mains_status_after_the_threads_atexit_handlers_and_a_last_flush(status):
    # run() skips the interpreter's teardown (1-2.5 s with torch loaded), not what an exit must do.
    proc = python(EXIT, str(status))
    assert proc.returncode == status, proc.stderr
    assert proc.stdout.splitlines() == ["main's output", "other thread ended", "atexit handler ran"]


def test_a_last_flush_that_fails_is_exit_status_120_as_in_python():
    proc = python(EXIT, "0", env={**os.environ, "FULL_STDOUT": "1"})
    assert proc.returncode == 120, proc.stderr


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches /proc/<pid>/maps for torch's library")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_torch_is_imported_is_one_line(signum, mnist_root, tmp_path, child_process):
    # A Ctrl-C in the first seconds of `mnistlab train`, as torch is imported, printed a traceback from deep
    # inside torch; sent as now, once torch's C++ library is loaded, it was a SystemError in the initialisation
    # of torch's extension, then a segmentation fault.
    proc = child_process([sys.executable, "-m", "mnistlab", "train", "--data-dir", str(mnist_root), "--out", "run"],
                         cwd=tmp_path)
    deadline = time.monotonic() + 60
    while "libtorch_cpu" not in Path(f"/proc/{proc.pid}/maps").read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the command ended before torch was imported"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (128 + signum, f"mnistlab train: interrupted by {signal.Signals(signum).name}\n")
    assert not (tmp_path / "run").exists()
