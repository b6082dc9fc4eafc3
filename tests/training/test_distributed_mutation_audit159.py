"""Mutation audit of mnistlab.training.distributed: what the existing tests let change unnoticed.

Each test drives one helper directly, in this process: the rank helpers and the checks with torchrun's environment
set by hand, the signal block with its handlers read back, the stderr relay on recorded streams, and the launcher
with a stand-in for torchrun's process (its command, environment, stderr, exit status and the signals it is sent).
"""

from __future__ import annotations

import io
import os
import signal
import threading

import pytest
import torch

from mnistlab.errors import ERROR_FILE, ConfigError
from mnistlab.training import distributed

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}


@pytest.fixture
def torchrun_env(monkeypatch):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


# ---- rank helpers and checks ------------------------------------------------------------------------------------


def test_torchrun_is_all_three_variables_not_any(monkeypatch):
    # RANK alone is set by other launchers and by users' scripts; that process is no torchrun worker.
    for key in TORCHRUN:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    assert not distributed.launched_by_torchrun()
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    assert distributed.init(torch.device("cpu")) is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.launched_by_torchrun()


def test_is_main_in_a_process_group_is_rank_0(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    for r, main in ((0, True), (1, False)):
        monkeypatch.setattr(distributed.dist, "get_rank", lambda r=r: r)
        monkeypatch.setenv("RANK", "0")  # the group's rank wins over the environment's
        assert distributed.is_main() is main


def test_local_device_gives_each_worker_its_gpu_and_leaves_the_cpu_alone(torchrun_env):
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu")


def test_several_processes_on_mps_are_refused():
    with pytest.raises(ConfigError, match=r"multi-process training runs on CUDA \(NCCL\) or the CPU \(gloo\), not MPS"):
        distributed.check_processes(2, torch.device("mps"), 64)
    distributed.check_processes(1, torch.device("mps"), 64)


def test_sync_batchnorm_is_refused_on_mps_too():
    with pytest.raises(ConfigError, match=r"^train.sync_batchnorm needs CUDA, but this run is on mps"):
        distributed.check_sync_batchnorm(True, torch.device("mps"))
    distributed.check_sync_batchnorm(True, torch.device("cuda"))
    distributed.check_sync_batchnorm(False, torch.device("cpu"))


def test_init_checks_the_processes_before_joining(torchrun_env):
    # A worker of too many processes for the cores refuses before it waits in the join for the others.
    torchrun_env.setenv("WORLD_SIZE", "3")
    torchrun_env.setenv("LOCAL_WORLD_SIZE", "3")
    torchrun_env.setattr(distributed.machine, "usable_cores", lambda: 2)
    torchrun_env.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    with pytest.raises(ConfigError, match=r"--nproc 3 on the CPU, but this machine has 2 core\(s\)"):
        distributed.init(torch.device("cpu"))


def test_init_joins_with_gloo_on_the_cpu_and_only_once(torchrun_env):
    joined = []
    torchrun_env.setattr(distributed.machine, "usable_cores", lambda: 2)
    torchrun_env.setattr(distributed.dist, "init_process_group", lambda *a, **k: joined.append(a))
    assert distributed.init(torch.device("cpu")) is True and joined == [("gloo",)]
    torchrun_env.setattr(distributed, "active", lambda: True)  # already in the group
    assert distributed.init(torch.device("cpu")) is False and joined == [("gloo",)]


def test_the_collectives_of_one_process_touch_no_process_group(monkeypatch):
    # A 1-process run calls barrier() (and the launcher's workers shutdown()) with no group to use.
    for name in ("barrier", "destroy_process_group", "all_reduce", "broadcast_object_list", "all_gather_object"):
        monkeypatch.setattr(distributed.dist, name, lambda *a, name=name, **k: pytest.fail(f"dist.{name} called"))
    distributed.barrier()
    distributed.shutdown()
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.gather_objects(3) == [3]


# ---- the signal block of the join ---------------------------------------------------------------------------------


def test_the_join_block_takes_sigint_sigterm_and_sighup_and_gives_them_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with distributed._ended_by_a_signal():
        inside = {s: signal.getsignal(s) for s in before}
        fd = signal.set_wakeup_fd(-1)  # the block's pipe: put back at once
        signal.set_wakeup_fd(fd)
    # SIGHUP (the terminal closing) too: Python's default ends the process without a word while the join waits
    assert all(callable(h) and getattr(h, "__name__", "") == "end" for h in inside.values()), inside
    assert fd != -1
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.set_wakeup_fd(-1) == -1  # no wakeup fd left behind: the next signal would write to a closed pipe


def test_the_join_block_in_another_thread_runs_the_block_and_sets_nothing():
    # Only the main thread may set handlers; a library user's init from a thread must not raise ValueError.
    ran, errors = [], []

    def body():
        try:
            with distributed._ended_by_a_signal():
                ran.append(signal.getsignal(signal.SIGINT))
        except Exception as e:  # noqa: BLE001 -- the test reports it below
            errors.append(e)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert errors == [] and ran == [signal.getsignal(signal.SIGINT)]


def test_an_orphaned_torchrun_gets_sigterm_the_signal_workers_stop_cleanly_on(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.sys, "platform", "linux")
    monkeypatch.setattr(distributed.ctypes, "CDLL", lambda name: type("C", (), {"prctl": lambda *a: calls.append(a)}))
    distributed.dying_with_parent()()
    assert calls == [(1, signal.SIGTERM)]  # PR_SET_PDEATHSIG; SIGKILL would stop rank 0 before it saved anything


# ---- the relay of stderr ---------------------------------------------------------------------------------------


def relayed(capfd, tmp_path, text: bytes, **kw) -> str:
    distributed._relay(io.BytesIO(text), tmp_path / "no-error-file", **kw)
    return capfd.readouterr().err


@pytest.mark.parametrize("exception", [
    b"[rank12]: OSError: disk full\n",  # rank 10 and up: torch's prefix has two digits
    b"[rank1]: AssertionError\n",  # an exception without a message
])
def test_a_workers_own_error_after_a_signal_is_shown_with_what_follows(tmp_path, capfd, exception):
    prefix = exception.split(b" ")[0]
    text = (prefix + b" Traceback (most recent call last):\n" + prefix + b'   File "x.py", line 1\n' + exception
            + b"resume with: mnistlab train --resume run\n")
    assert relayed(capfd, tmp_path, text, received=[2]) == text.decode()


def test_nothing_is_relayed_once_a_worker_left_an_error(tmp_path, capfd):
    # The launcher prints the error itself; the rest is the others' reaction to that worker's exit.
    (tmp_path / "error").write_text("run already holds a run")
    distributed._relay(io.BytesIO(b"Traceback (most recent call last):\nRuntimeError: closed\nsome line\n"),
                       tmp_path / "error")
    assert capfd.readouterr().err == ""


def test_a_worker_ended_by_a_signal_after_its_traceback_is_not_counted_a_failure(tmp_path, capfd):
    # exit code 130 (a worker ended by a signal of its own handler, not by an error of its own): torchrun's report
    # stays, as for any end the launcher did not explain
    own = b'[rank1]: Traceback (most recent call last):\n[rank1]:   File "x.py", line 1\n[rank1]: ValueError: x\n'
    log = b"E1 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 130) local_rank: 1 (pid: 9)\n"
    rest = b"torchrun's report\n"
    failed: list[int] = []
    assert relayed(capfd, tmp_path, own + log + rest, failed=failed, killed=[]) == (own + log + rest).decode()
    assert failed == []


def test_an_error_chained_to_a_signal_is_shown_whole(tmp_path, capfd):
    # "During handling of ... ValueError ..., another exception occurred: KeyboardInterrupt": the ValueError's
    # traceback and the one chained to it are one report
    text = (b"Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: x\n\n"
            b"During handling of the above exception, another exception occurred:\n\n"
            b"Traceback (most recent call last):\n  File \"x.py\", line 3\nKeyboardInterrupt\n")
    assert relayed(capfd, tmp_path, text, received=[2]) == text.decode()


def test_interleaved_tracebacks_one_of_its_own_are_shown(tmp_path, capfd):
    # Two workers' tracebacks in pieces: one an error of its own, the other the signal's, ending last.
    text = (b"Traceback (most recent call last):\nTraceback (most recent call last):\n  File \"a.py\", line 1\n"
            b"  File \"b.py\", line 2\nOSError: disk\nKeyboardInterrupt\n")
    assert relayed(capfd, tmp_path, text, received=[2]) == text.decode()


def test_two_tracebacks_begun_on_one_line_both_count(tmp_path, capfd):
    # Two processes' "Traceback" headers printed at once can share a line; the second's error is its own.
    text = (b"Traceback (most recent call last):\nTraceback (most recent call last):\n"
            b"  File \"a.py\", line 1\n  File \"b.py\", line 2\nKeyboardInterrupt\nOSError: disk\n")
    assert relayed(capfd, tmp_path, text, received=[2]) == text.decode()
    text = text.replace(b":\nTraceback", b":Traceback")
    assert relayed(capfd, tmp_path, text, received=[2]) == text.decode()


def test_an_indented_line_after_the_signals_tracebacks_is_shown(tmp_path, capfd):
    # Once every traceback held has ended, an indented line is output of its own, not a frame of theirs.
    text = b"Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyboardInterrupt\n"
    assert relayed(capfd, tmp_path, text + b"  resume with: mnistlab train --resume run\n", received=[2]) == (
        "  resume with: mnistlab train --resume run\n")


def test_torchruns_last_log_lines_are_shown_when_the_stream_ends(tmp_path, capfd):
    text = (b"some output\nW1 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 9 closing "
            b"signal SIGTERM\n")
    assert relayed(capfd, tmp_path, text, killed=[], failed=[]) == text.decode()


def test_a_signal_without_a_name_is_named_by_its_number():
    assert "process 0 of 2 was killed by signal 40, and the others" in distributed._killed_line(2, 0, 40)


# ---- the launcher, with a stand-in for torchrun -----------------------------------------------------------------


class FakeTorchrun:
    """torchrun's process as launch() sees it: ``stderr`` bytes, an exit status, and ``during`` run while launch
    waits (where a test sends this process a signal, as a terminal would)."""

    def __init__(self, stderr: bytes = b"", rc: int = 0, during=None, error: str | None = None):
        self.stderr_bytes, self.rc, self.during, self.error = stderr, rc, during, error
        self.sent: list[int] = []
        self.cmd: list[str] = []
        self.kw: dict = {}

    def __call__(self, cmd, **kw):  # subprocess.Popen
        self.cmd, self.kw = cmd, kw
        if self.error is not None:  # a worker's MnistlabError, left where the environment says
            with open(kw["env"][ERROR_FILE], "w") as f:
                f.write(self.error)
        self.stderr = io.BytesIO(self.stderr_bytes)
        return self

    def wait(self):
        if self.during:
            self.during(self)
        return self.rc

    def send_signal(self, signum):
        self.sent.append(signum)


def send_self(signum):
    def during(fake):
        # Safety: with no handler of launch's in place the signal would end pytest
        assert getattr(signal.getsignal(signum), "__name__", "") == "forward", signal.getsignal(signum)
        os.kill(os.getpid(), signum)

    return during


@pytest.mark.parametrize("signum, passed, status", [(signal.SIGHUP, signal.SIGTERM, 129),
                                                    (signal.SIGTERM, signal.SIGTERM, 143)])
def test_the_launcher_passes_a_signal_on_and_exits_as_it_says(monkeypatch, capfd, signum, passed, status):
    # torchrun passes SIGINT and SIGTERM on to the workers; the terminal's SIGHUP goes as a SIGTERM. torchrun
    # exits 1 after any signal; the launcher's status is the signal's, as of one process.
    fake = FakeTorchrun(rc=1, during=send_self(signum))
    monkeypatch.setattr(distributed.subprocess, "Popen", fake)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert distributed.launch(2, ["train"]) == status
    assert fake.sent == [passed]
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are given back
    capfd.readouterr()


def test_the_launcher_leaves_an_ignored_sighup_ignored(monkeypatch, capfd):
    # `nohup mnistlab train --nproc 2`: the terminal closing must not stop the run
    seen = []
    fake = FakeTorchrun(rc=0, during=lambda f: seen.append(signal.getsignal(signal.SIGHUP)))
    monkeypatch.setattr(distributed.subprocess, "Popen", fake)
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert distributed.launch(2, ["train"]) == 0
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)
    capfd.readouterr()


def test_the_launcher_starts_torchrun_in_its_own_session_and_prints_a_workers_error_once(monkeypatch, capfd):
    fake = FakeTorchrun(stderr=b"[rank1]: RuntimeError: Connection closed by peer\nChildFailedError\n", rc=1,
                        error="run already holds a run")
    monkeypatch.setattr(distributed.subprocess, "Popen", fake)
    assert distributed.launch(2, ["train", "--out", "run"]) == 2
    assert capfd.readouterr().err == "mnistlab train: error: run already holds a run\n"
    # its own session: a terminal's Ctrl-C reaches the launcher alone, which passes it on once
    assert fake.kw["start_new_session"] is True
    assert fake.cmd[-4:] == ["-m", "mnistlab", "train", "--out", "run"][-4:]
    assert "--nproc_per_node=2" in fake.cmd and f"--shutdown_timeout={distributed.SHUTDOWN_TIMEOUT_S}" in fake.cmd
