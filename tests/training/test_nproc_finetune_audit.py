"""Audit of --init-from and --nproc: a worker killed by a signal, and an --init-from that names no checkpoint."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnistlab.errors import CheckpointError
from mnistlab.training import distributed
from mnistlab.training.finetune import read_init_checkpoint

# torchrun's stderr (trimmed) after the kernel's OOM killer sent SIGKILL to rank 1 of a `train --nproc 2` run in
# its second epoch: rank 0's traceback of the lost peer came first, the cause last, 80 lines in all.
ELASTIC = ("W1203 07:38:21.643000 9261 .venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/"
           "api.py")
KILLED_STDERR = (
    "[rank0]: Traceback (most recent call last):\n"
    '[rank0]:   File "/m/fit.py", line 1006, in _backward\n'
    "[rank0]:     (loss if self.scaler is None else self.scaler.scale(loss)).backward()\n"
    "[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
    "[127.0.0.1]:32181: Connection reset by peer. This is typically caused by a remote worker hanging.\n"
    f"{ELASTIC}:1028] Sending process 9274 closing signal SIGTERM\n"
    f"{ELASTIC.replace('W1203', 'E1203')}:1002] failed (exitcode: -9) local_rank: 1 (pid: 9275) of binary: python\n"
    "Traceback (most recent call last):\n"
    '  File "/t/torch/distributed/launcher/api.py", line 386, in launch_agent\n'
    "    raise ChildFailedError(\n"
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    "======================================================\n"
    "mnistlab FAILED\n"
    "------------------------------------------------------\n"
    "Root Cause (first observed failure):\n"
    "[0]:\n"
    "  rank      : 1 (local_rank: 1)\n"
    "  exitcode  : -9 (pid: 9275)  (SIGKILL)\n"
    "======================================================\n"
)


def test_a_worker_killed_by_a_signal_is_one_line_naming_it_and_the_way_on(tmp_path, monkeypatch, capfd):
    # Was: those 80 lines and exit status 1, the cause (rank 1, SIGKILL) in the last of them under rank 0's
    # "Connection reset by peer".
    real = subprocess.Popen
    script = f"import sys; sys.stderr.write({KILLED_STDERR!r}); sys.exit(1)"  # torchrun's exit after that
    monkeypatch.setattr(distributed.subprocess, "Popen", lambda cmd, **kw: real([sys.executable, "-c", script], **kw))
    rc = distributed.launch(2, ["train", "--out", str(tmp_path / "my run")], run=str(tmp_path / "my run"))
    err = capfd.readouterr().err
    assert rc == 128 + 9, err  # as the shell says of one process killed so
    assert err.splitlines() == [
        "mnistlab train: error: process 1 of 2 was killed by SIGKILL (out of memory? `dmesg` says whether the "
        "kernel's OOM killer ended it), and the others were stopped; the run folder keeps what was saved before "
        f"(last.ckpt, at the last epoch's end): continue with `mnistlab train --resume '{tmp_path / 'my run'}' "
        "--nproc 2`, or, if no epoch ended, start the run anew"]  # the folder named, quoted: RUN was pasted as is
    # A run folder the command line did not name (runs/<date>-<time>-<model>, made by rank 0): RUN.
    assert "`mnistlab train --resume RUN --nproc 2`" in distributed._killed_line(2, 1, 9)


def test_a_worker_that_failed_of_its_own_error_is_still_shown_whole(tmp_path, capfd):
    # A worker's own error (a bug, not a lost peer) stays on the screen, with torchrun's report of it.
    import io

    own = ("[rank1]: Traceback (most recent call last):\n[rank1]:   File \"x.py\", line 1\n"
           "[rank1]: ValueError: a real one\n"
           f"{ELASTIC}:1002] failed (exitcode: 1) local_rank: 1 (pid: 9275) of binary: python\n")
    killed: list[tuple[int, int]] = []
    distributed._relay(io.BytesIO(own.encode()), tmp_path / "no-error-file", killed=killed)
    assert capfd.readouterr().err == own and killed == []


def test_a_lost_peer_with_no_worker_killed_is_still_shown(tmp_path, capfd):
    # A peer lost for another reason (a node of a multi-node run gone): its traceback is the only word of it, and
    # is shown once the stream ends without torchrun naming a killed worker.
    import io

    lost = KILLED_STDERR.split(ELASTIC)[0]  # rank 0's "Connection reset by peer" traceback alone
    report = f"{ELASTIC}:1002] failed (exitcode: 1) local_rank: 0 (pid: 9274) of binary: python\n"
    killed: list[tuple[int, int]] = []
    distributed._relay(io.BytesIO((lost + report).encode()), tmp_path / "no-error-file", killed=killed)
    err = capfd.readouterr().err
    assert killed == [] and lost in err and report in err


@pytest.mark.parametrize("name", ["missing.ckpt", "config.toml"])
def test_an_init_from_that_is_no_checkpoint_says_which_setting_and_what_it_takes(tmp_path, name):
    # Was: "checkpoint .../missing.ckpt does not exist", naming neither --init-from nor what it takes (a run
    # folder without best.ckpt already said "finetune.init_from: ...").
    (tmp_path / "config.toml").write_text("[model]\nname = 'cnn'\n")
    with pytest.raises(CheckpointError) as e:
        read_init_checkpoint(tmp_path / name)
    message = str(e.value)
    assert message.startswith("finetune.init_from: ") and str(tmp_path / name) in message, message
    assert message.endswith("it takes a .ckpt file that mnistlab train wrote (best.ckpt, last.ckpt, an epoch's "
                            ".ckpt) or a run folder (its best.ckpt)"), message
    assert "\n" not in message


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    # Each process takes cuda:LOCAL_RANK; the third of --nproc 3 on a 2-GPU machine died in set_device
    # ("invalid device ordinal") with a traceback per process.
    import torch

    from mnistlab.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    distributed.check_processes(2, torch.device("cuda"), 64)
    with pytest.raises(ConfigError, match=r"^--nproc 3 on CUDA, but this machine has 2 GPU\(s\); use at most 2 "):
        distributed.check_processes(3, torch.device("cuda"), 66)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # under torchrun across machines: the processes on this one
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    distributed.check_processes(4, torch.device("cuda"), 64)


def test_a_batch_not_divisible_by_the_processes_is_told_the_nearest_that_are():
    import torch

    from mnistlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"; use --batch-size 62 or 64$"):
        distributed.check_processes(2, torch.device("cpu"), 63)
    with pytest.raises(ConfigError, match=r"; use --batch-size 2$"):  # not 0
        distributed.check_processes(2, torch.device("cpu"), 1)
