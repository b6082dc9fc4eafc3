"""Audit of `mnistlab train --nproc`: a worker that crashes of an error of its own, and the launcher's share of
the cores when OMP_NUM_THREADS holds what OpenMP does not take."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mnistlab.training import distributed

ELASTIC = "E1203 13:44:14.979000 1705 torch/distributed/elastic/multiprocessing/api.py"
OWN = ('[rank1]: Traceback (most recent call last):\n[rank1]:   File "/m/fit.py", line 891, in _loss\n'
       "[rank1]: RuntimeError: a bug in rank 1\n")
FAILED = f"{ELASTIC}:1002] failed (exitcode: 1) local_rank: 1 (pid: 1711) of binary: python\n"
# torchrun's stderr (trimmed) after rank 1 of a `train --nproc 2` run raised a RuntimeError in its training step:
# its traceback, rank 0's of the lost peer, torchrun's log lines, then its own traceback and report, 134 lines.
CRASHED_STDERR = (
    OWN
    + "[rank0]: Traceback (most recent call last):\n"
    '[rank0]:   File "/m/fit.py", line 1049, in _backward\n'
    "[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection "
    "closed by peer [127.0.0.1]:11669. This is typically caused by a remote worker crashing.\n"
    f"{ELASTIC.replace('E1203', 'W1203')}:1028] Sending process 1710 closing signal SIGTERM\n"
    + FAILED
    + "Traceback (most recent call last):\n"
    '  File "/t/torch/distributed/launcher/api.py", line 386, in launch_agent\n'
    "    raise ChildFailedError(\n"
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    "============================================================\n"
    "mnistlab FAILED\n"
    "------------------------------------------------------------\n"
    "Root Cause (first observed failure):\n"
    "[0]:\n"
    "  rank      : 1 (local_rank: 1)\n"
    "  exitcode  : 1 (pid: 1711)\n"
    "============================================================\n"
)
END = "mnistlab train: process 1 of 2 failed with the error above, and the others were stopped"


def faked_torchrun(monkeypatch, stderr: str, rc: int = 1) -> None:
    real = subprocess.Popen
    script = f"import sys; sys.stderr.write({stderr!r}); sys.exit({rc})"
    monkeypatch.setattr(distributed.subprocess, "Popen", lambda cmd, **kw: real([sys.executable, "-c", script], **kw))


def test_a_worker_that_crashed_is_its_traceback_and_one_line_not_torchruns_report(tmp_path, monkeypatch, capfd):
    # Was: all 134 lines, the last 90 of them torchrun's ChildFailedError traceback (read as torchrun crashing),
    # its report and rank 0's "Connection closed by peer".
    faked_torchrun(monkeypatch, CRASHED_STDERR)
    rc = distributed.launch(2, ["train", "--out", str(tmp_path / "run")])
    err = capfd.readouterr().err
    assert rc == 1, err  # as one process that raised
    assert err.splitlines() == [*OWN.splitlines(), FAILED.rstrip("\n"), END]


def test_a_crash_held_with_torchruns_line_is_shown_before_it(tmp_path, monkeypatch, capfd):
    # No other traceback between the crash and torchrun's log: the crash is still held when torchrun names it.
    stderr = CRASHED_STDERR.replace(CRASHED_STDERR[len(OWN):CRASHED_STDERR.index(FAILED)], "")
    faked_torchrun(monkeypatch, stderr)
    assert distributed.launch(2, ["train"]) == 1
    assert capfd.readouterr().err.splitlines() == [*OWN.splitlines(), FAILED.rstrip("\n"), END]


def test_a_real_crash_in_one_rank_is_its_traceback_and_one_line(mnist_root, tmp_path, monkeypatch, capfd):
    # The real thing, in two processes: rank 1's loss raises in its first training steps.
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch.nn.functional as F\n"
        "    def crash(*a, **k):\n"
        "        raise RuntimeError('a bug in rank 1')\n"
        "    F.cross_entropy = crash\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(inject), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    from mnistlab.cli import main

    rc = main(["train", "--data-dir", str(mnist_root), "--model", "cnn", "--set", "model.width=0.25", "--epochs",
               "1", "--threads", "1", "--set", "data.train_limit=1000", "--set", "data.val_size=200", "--set",
               "data.download=false", "--set", "tensorboard.enabled=false", "--quiet", "--out", "run", "--nproc", "2"])
    err = capfd.readouterr().err
    assert rc == 1, err
    assert "[rank1]: RuntimeError: a bug in rank 1" in err
    assert err.splitlines()[-1] == END, err
    assert "ChildFailedError" not in err and "closed by peer" not in err and "reset by peer" not in err, err


@pytest.mark.parametrize("value", ["", "0", "auto", "-2"])
def test_an_omp_num_threads_openmp_ignores_is_replaced_by_the_share(monkeypatch, value):
    # Was kept: OpenMP ignored it (a "libgomp: Invalid value" line from every process) and each process took
    # all the cores, where the README says each gets an equal share unless OMP_NUM_THREADS is set to a number.
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(distributed.machine, "usable_cores", lambda: 8)
    assert distributed._worker_env(2)["OMP_NUM_THREADS"] == "4"


@pytest.mark.parametrize("value", ["3", "3,1"])
def test_an_omp_num_threads_openmp_takes_is_kept(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(distributed.machine, "usable_cores", lambda: 8)
    assert distributed._worker_env(2)["OMP_NUM_THREADS"] == value
