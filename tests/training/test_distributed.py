"""Multi-process training: batch sharding, a real 2-process CPU run against a 1-process run, Ctrl-C and resume.

The runs are real ``mnistlab train`` subprocesses (``--nproc 2`` goes through torchrun
and gloo) of lenet5 -- no batch norm, no dropout, so two processes must compute what
one does -- on 1,991 real MNIST training images: 20 steps an epoch of the global batch
of 100, the last one of 91 images, split 45/46 between the ranks.

A Ctrl-C'd 2-process run resumed to the uninterrupted result is in test_ddp_features_audit146.py, with mixup,
augmentation and EMA on (one pair of runs for both: each 2-process run costs seconds of starting).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnistlab.config import Config, apply_overrides
from mnistlab.data.batching import epoch_permutation, iterate_batches
from mnistlab.data.datasets import Split
from mnistlab.errors import ConfigError
from mnistlab.models import build_model
from mnistlab.training.checkpoint import read_checkpoint
from mnistlab.training.fit import Trainer

# Measured: after 60 steps the largest weight difference between the 2-process and the
# 1-process run is 5e-7 (the gradient is summed in another order); metrics agree to 1e-7.
# The runs train in fp32 (train.precision=fp32 below): in bf16 autocast, precision auto's choice on
# a CPU with bf16 instructions, each process rounds its half-batch differently, and the weights
# then differed by 4e-3.
WEIGHT_TOL = 1e-5
EPOCHS = 3
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def train_args(root: Path, *extra: str) -> list[str]:
    return [
        "train", "--data-dir", str(root), "--model", "lenet5", "--epochs", str(EPOCHS), "--batch-size", "100",
        "--threads", "1", "--set", "data.train_limit=1991", "--set", "data.val_size=500",
        "--set", "data.download=false", "--set", "tensorboard.enabled=false", "--set", "train.precision=fp32", *extra,
    ]


def mnistlab(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mnistlab", *args], cwd=cwd, env=ENV, text=True, **kw)


def finished(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"{out}\n{err}"


def launched_here(*args: str, cwd: Path) -> int:
    """``mnistlab ARGS`` (``train --nproc N``) with the launcher in this process: the command's main(), in ``cwd``
    and with ENV's settings. torchrun and the training processes it starts are real processes, as from the
    command; only the launcher's own start is saved (seconds of importing torch to start torchrun and wait).
    Their output goes where this process's goes (pytest captures it). Tests of what the launcher does with a
    signal start it as a process of its own."""
    from mnistlab.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for key in ("PYTHONUNBUFFERED", "OMP_NUM_THREADS"):
            mp.setenv(key, ENV[key])
        return main(list(args))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(mnist_root, tmp_path_factory):
    """A 1-process and a 2-process run of the same config, made at the same time, each in a folder of its own."""
    one_cwd, two_cwd = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    one = mnistlab(*train_args(mnist_root, "--out", "run"), cwd=one_cwd, **pipes)
    try:
        rc = launched_here(*train_args(mnist_root, "--out", "run", "--nproc", "2"), cwd=two_cwd)
    finally:
        finished(one)
    assert rc == 0, "the 2-process run failed: see the captured output"
    return one_cwd, two_cwd


# ---- the batches ----------------------------------------------------------------


def test_the_parts_of_every_batch_make_up_the_batch_in_order():
    split = Split(torch.zeros(23, 1, 2, 2, dtype=torch.uint8), torch.arange(23))
    order = epoch_permutation(23, seed=3, epoch=1)
    for world in (1, 2, 4):
        whole = [y for _, y in iterate_batches(split, 8, order=order)]
        parts = [[y for _, y in iterate_batches(split, 8, order=order, part=(r, world))] for r in range(world)]
        for b, batch in enumerate(whole):
            shares = [p[b] for p in parts]
            assert torch.equal(torch.cat(shares), batch)
            assert max(map(len, shares)) - min(map(len, shares)) <= 1  # the last batch (7 rows) splits near-evenly
    # Resuming mid-epoch: part and start together skip the same batches.
    late = [y.tolist() for _, y in iterate_batches(split, 8, order=order, start=2, part=(1, 2))]
    assert late == [order[16 + 3 : 23].tolist()]


def test_a_batch_size_not_divisible_by_the_processes_is_refused():
    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    with pytest.raises(ValueError, match="batch_size 10 is not divisible by 3 processes"):
        iterate_batches(split, 10, part=(0, 3))
    with pytest.raises(ValueError, match="0 <= rank < world"):
        iterate_batches(split, 10, part=(2, 2))


def test_sync_batchnorm_on_the_cpu_is_a_clear_config_error(mnist_small):
    cfg = apply_overrides(Config(), ["model.name=cnn", "train.device=cpu", "train.sync_batchnorm=true"])
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28))
    with pytest.raises(ConfigError, match="train.sync_batchnorm needs CUDA.*no CPU implementation"):
        Trainer(model, mnist_small, cfg)


# ---- real runs ------------------------------------------------------------------


def test_two_processes_train_what_one_process_trains(runs):
    one_cwd, two_cwd = runs
    one, two = read_checkpoint(one_cwd / "run" / "last.ckpt"), read_checkpoint(two_cwd / "run" / "last.ckpt")
    assert one["step"] == two["step"] == EPOCHS * 20
    assert max_weight_difference(one["model"], two["model"]) < WEIGHT_TOL
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert h2[key] == pytest.approx(h1[key], abs=1e-6), key
    s1 = json.loads((one_cwd / "run" / "summary.json").read_text())
    s2 = json.loads((two_cwd / "run" / "summary.json").read_text())
    assert (s1["processes"], s2["processes"]) == (1, 2)
    assert s2["test_accuracy"] == pytest.approx(s1["test_accuracy"], abs=2e-4)  # at most 2 of 10,000 images
    assert len(two["rng_ranks"]) == 2 and "rng_ranks" not in one


# torch.compile as the identity (compiling takes minutes here): train.compile's passes before training still run.
# A user's script, run by torchrun in every process: train() with callbacks of its own, and ended as a script
# ends. No report (rank 0's plots take seconds; the `runs` fixture's runs write it).
USER_SCRIPT = """
import sys
from pathlib import Path
import torch
torch.compile = lambda module, **kwargs: module
from mnistlab import Config, apply_overrides, train
from mnistlab.callbacks import History, ModelCheckpoint, TensorBoard

here = Path.cwd()
train(apply_overrides(Config(), sys.argv[1:]), out="run", report=False, callbacks=[
    ModelCheckpoint(dirpath="top", monitor="val_loss", save_top_k=2, save_best_as=None, filename="e{epoch}.ckpt"),
    History(path=here / "mine.csv"), TensorBoard(log_dir=here / "tb", histograms=False, graph=False, images=False)])
"""


@pytest.fixture(scope="module")
def uneven_parts(mnist_root, tmp_path_factory):
    """A 2-process run in parts of at most 15 rows, with train.compile and callbacks of the user's that write
    files: the folder, and torchrun's result.

    One run for three tests (each run of 2 processes costs seconds of starting): the parts must train what one
    process trains, train.compile's passes before training must not hang the processes, and the callbacks must
    write as in one process.
    Each process's 50 images of a batch go in 4 parts (13, 13, 12, 12); the last batch of 91 splits 46 / 45:
    4 parts (12, 12, 11, 11) on rank 0, 3 (15, 15, 15) on rank 1. torch.compile is the identity, and its passes
    leave no trace, so the run is one in parts without compiling.
    """
    cwd = tmp_path_factory.mktemp("parts")
    script = cwd / "user_script.py"
    script.write_text(USER_SCRIPT)
    overrides = [f"data.dir={mnist_root}", "model.name=lenet5", f"train.epochs={EPOCHS}", "train.batch_size=100",
                 "train.threads=1", "data.train_limit=1991", "data.val_size=500", "data.download=false",
                 "tensorboard.enabled=false", "train.precision=fp32", "train.compile=true", "train.micro_batch_size=15"]
    # --log-dir (outside cwd, whose files a test lists): without it torchrun leaves a torchelastic_* folder in /tmp
    logs = tmp_path_factory.mktemp("torchrun-logs")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "--log-dir", str(logs), str(script), *overrides], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a hang
        # torchrun ends its workers on SIGTERM (killed after its shutdown timeout, 30 s); a timeout that killed
        # torchrun alone left them running, each in a session of its own.
        proc.terminate()
        out, err = proc.communicate(timeout=120)
        err += "\n(the run did not end within 300 s)"
    return cwd, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_two_processes_in_micro_batches_train_what_one_process_trains(runs, uneven_parts):
    # DDP averaging once per batch, in the last part's backward, however many parts each rank has.
    one_cwd, _ = runs
    parts_cwd, proc = uneven_parts
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, parts = read_checkpoint(one_cwd / "run" / "last.ckpt"), read_checkpoint(parts_cwd / "run" / "last.ckpt")
    assert parts["step"] == one["step"] == EPOCHS * 20  # one optimizer step per batch, as without parts
    assert max_weight_difference(one["model"], parts["model"]) < WEIGHT_TOL


def test_compile_ahead_in_micro_batches_does_not_hang_two_processes_with_uneven_parts(uneven_parts):
    # The last batch's parts: 4 on rank 0, 3 on rank 1 (see uneven_parts). train.compile's passes synced every
    # part's backward, so the ranks made unlike numbers of all-reduces and waited for each other forever.
    parts_cwd, proc = uneven_parts
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_checkpoint(parts_cwd / "run" / "last.ckpt")["step"] == EPOCHS * 20


def test_a_users_callbacks_that_write_files_write_them_once(uneven_parts):
    # Every rank runs them, with rank 0's metrics. On the others, ModelCheckpoint failed at the start (they have
    # no run folder); History and TensorBoard, given paths, wrote the same files from both ranks.
    cwd, proc = uneven_parts
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = (cwd / "mine.csv").read_text()
    assert mine == (cwd / "run" / "metrics.csv").read_text() and len(mine.splitlines()) == 1 + EPOCHS
    rows = list(csv.DictReader(io.StringIO(mine)))
    lowest = sorted(rows, key=lambda r: float(r["val_loss"]))[:2]  # save_top_k=2: the epochs of the two lowest
    assert sorted(p.name for p in (cwd / "run" / "top").iterdir()) == sorted(f"e{r['epoch']}.ckpt" for r in lowest)
    events = [p for p in (cwd / "tb").glob("events.out.tfevents.*") if not p.name.endswith(".end")]
    assert len(events) == 1  # one writer (a file per process, named by its pid)
    assert sorted(p.name for p in cwd.iterdir()) == ["mine.csv", "run", "tb", "user_script.py"]


def test_only_rank_0_writes_files(runs):
    one_cwd, two_cwd = runs
    # The same files as a 1-process run (config, metrics, checkpoints, summary, report), no run.lock left,
    # and nothing anywhere else: rank 1 made no folder of its own (e.g. runs/<date>-lenet5) in its cwd.
    assert files_under(two_cwd) == files_under(one_cwd)
    assert {"run/config.toml", "run/metrics.csv", "run/summary.json", "run/best.ckpt", "run/last.ckpt",
            "run/report.html"} <= files_under(two_cwd)
    rows = (two_cwd / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + EPOCHS  # one writer: a header and one row per epoch, not two


def test_the_launcher_leaves_out_torchruns_traceback_of_a_signal_it_passed_on(tmp_path, capfd):
    import io

    from mnistlab.training.distributed import SHUTDOWN_TIMEOUT_S, _relay

    text = (b"W1201 20:25:25.805000 9856 torch/distributed/elastic/agent/server/api.py:753] Received 2 death "
            b"signal, shutting down workers\n"
            b"W1201 20:25:25.806000 9856 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process "
            b"9862 closing signal SIGINT\n"
            b"interrupted by SIGINT at epoch 2\nresume with: mnistlab train --resume run\n"
            b"Traceback (most recent call last):\n  File \"run.py\", line 9, in main\n    run()\n"
            b"torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 2\n"
            b"Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: a real one\n")
    _relay(io.BytesIO(text), tmp_path / "no-error-file", received=[2])
    err = capfd.readouterr().err
    assert err == ("interrupted by SIGINT at epoch 2\nresume with: mnistlab train --resume run\n"
                   "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: a real one\n")
    _relay(io.BytesIO(text), tmp_path / "no-error-file")  # no signal passed on: everything, as before
    assert capfd.readouterr().err == text.decode()
    # torchrun's default of 30 s killed workers still validating or writing last.ckpt: the epoch was lost
    assert SHUTDOWN_TIMEOUT_S >= 600


def test_the_launcher_leaves_out_the_tracebacks_of_a_ctrl_c_that_came_while_the_processes_started(tmp_path, capfd):
    from mnistlab.training.distributed import _relay

    # As torchrun passed them on after a Ctrl-C in the first seconds (recorded, cut short): both workers were
    # importing torch, and their KeyboardInterrupt tracebacks came interleaved in pieces ("Traceback" in mid-line,
    # a line's indentation or newline apart from it); torchrun's own SignalException had a second one chained to it.
    frames = b'  File "<frozen runpy>", line 112, in _get_module_details\n  File "/m/config.py", line 82\n'
    text = (b"W1202 10:57:43.096000 10361 torch/distributed/elastic/agent/server/api.py:753] Received 2 death "
            b"signal, shutting down workers\n"
            b"Could not import runpy module\n"
            b"Traceback (most recent call last):\n" + frames
            + b"    _set_new_attribute(cls, '__eq__',Traceback (most recent call last):\n" + frames + b"\n"
            + b"    @dataclass    \nfrom torch.fx.experimental.proxy_tensor import py_sym_types\n"
            + b"^^^^^^  File \"/py/dataclasses.py\", line 1220, in wrap\n"
            + b"    setattr(cls, name, value)\nKeyboardInterrupt\n    import ipaddress\n" + frames
            + b"KeyboardInterrupt\n"
            b"Traceback (most recent call last):\n  File \"run.py\", line 9, in main\n    run()\n"
            b"torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 2\n\n"
            b"During handling of the above exception, another exception occurred:\n\n"
            b"Traceback (most recent call last):\n  File \"run.py\", line 11, in main\n    wait()\n"
            b"torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 2\n")
    _relay(io.BytesIO(text), tmp_path / "no-error-file", received=[2])
    assert capfd.readouterr().err == ""
    # Rank 0 was stopped before its training loop (tracing the graph) and said so; rank 1, in the loop, then
    # lost its peer in a collective.
    lost = (b"mnistlab train: interrupted by SIGINT\n[rank1]: Traceback (most recent call last):\n"
            b"[rank1]:   File \"fit.py\", line 717, in _train_epoch\n[rank1]:     step_sums = all_reduce_sum(step_sums)\n"
            b"[rank1]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection "
            b"closed by peer [127.0.0.1]:37278. This is typically caused by a remote worker crashing.\n")
    _relay(io.BytesIO(lost + text), tmp_path / "no-error-file", received=[2])
    assert capfd.readouterr().err == "mnistlab train: interrupted by SIGINT\n"
    # A worker's error among them (here after it joined the process group: torch prefixes its rank) is shown.
    error = b"[rank1]: Traceback (most recent call last):\n[rank1]:   File \"x.py\", line 1\n[rank1]: OSError: disk\n"
    _relay(io.BytesIO(text + error + b"resume with: mnistlab train --resume run\n"), tmp_path / "no-error-file",
           received=[2])
    assert capfd.readouterr().err == (error + b"resume with: mnistlab train --resume run\n").decode()


def test_ctrl_c_ends_a_process_waiting_for_the_others_to_join(tmp_path, child_process):
    # A Ctrl-C while the processes started ended those still importing torch; a rank already in
    # init_process_group waited on for them (30 minutes, in C++, where Python's handler cannot run),
    # and torchrun waits for it: the run hung. Here rank 1 of 2 joins a store (as torchrun's agent holds it)
    # that rank 0 never reaches.
    import datetime
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, None, True, timeout=datetime.timedelta(seconds=60),
                          wait_for_workers=False)
    env = {**ENV, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    code = ("import torch\nfrom mnistlab.training import distributed\nprint('joining', flush=True)\n"
            "distributed.init(torch.device('cpu'))\nprint('joined', flush=True)\n")
    proc = child_process([sys.executable, "-c", code], env=env, cwd=tmp_path)
    try:
        assert proc.stdout.readline() == "joining\n"
        deadline = time.monotonic() + 60
        while store.num_keys() == 0 and time.monotonic() < deadline:  # its keys: inside init_process_group
            time.sleep(0.05)
        assert store.num_keys() > 0
        # Waiting for the others. (A signal right as the keys appear ended the process by SIGINT's default
        # action, -2, here; once it waits, by the watcher: 130. Both end it; the hang was of 30 minutes.)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        del store
    assert proc.returncode in (130, -signal.SIGINT), f"{out}\n{err}"
    assert out == "" and err == ""  # rank 1 says nothing; rank 0 would say "interrupted by SIGINT", once


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_join_runs_python_code_ends_the_process_too(signum, tmp_path, child_process):
    # The join runs Python between its C++ calls (the rendezvous, the store barrier). There Python's own handler
    # ran first and raised KeyboardInterrupt, which unwound through half-made stores and process groups (a
    # traceback; once, under load, a process that never ended). Here without the watcher thread, in Python code.
    code = ("import types, time\nfrom mnistlab.training import distributed\n"
            "distributed.threading.Thread = lambda *a, **k: types.SimpleNamespace(start=int, join=int)\n"
            "with distributed._ended_by_a_signal():\n"
            "    print('waiting', flush=True)\n"
            "    while True:\n"
            "        time.sleep(0.01)\n")
    proc = child_process([sys.executable, "-c", code], env={**ENV, "RANK": "0"}, cwd=tmp_path)
    assert proc.stdout.readline() == "waiting\n"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (128 + signum, f"mnistlab train: interrupted by {signal.Signals(signum).name}\n")


def test_only_rank_0_says_that_a_signal_stopped_the_run(monkeypatch, capfd):
    # Ctrl-C before or after the training loop (loading the data, the final test) reaches every process,
    # and each printed "mnistlab train: interrupted by SIGINT".
    from mnistlab.cli import _interrupted

    for rank, lines in (("1", []), ("0", ["mnistlab train: interrupted by SIGINT"])):
        monkeypatch.setenv("RANK", rank)
        assert _interrupted("train", signal.SIGINT) == 130
        assert capfd.readouterr().err.splitlines() == lines
    monkeypatch.delenv("RANK")  # one process
    assert _interrupted("train", signal.SIGTERM) == 143
    assert capfd.readouterr().err.splitlines() == ["mnistlab train: interrupted by SIGTERM"]


def test_the_launcher_shares_the_cores_out_unless_told(monkeypatch):
    from mnistlab.training import distributed

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(distributed.machine, "usable_cores", lambda: 8)
    assert distributed._worker_env(2)["OMP_NUM_THREADS"] == "4"
    assert distributed._worker_env(16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert distributed._worker_env(2)["OMP_NUM_THREADS"] == "3"


def test_no_more_cpu_processes_than_cores(monkeypatch):
    from mnistlab.errors import ConfigError
    from mnistlab.training import distributed

    monkeypatch.setattr(distributed.machine, "usable_cores", lambda: 2)
    distributed.check_processes(2, torch.device("cpu"), 100)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    distributed.check_processes(4, torch.device("cuda"), 100)  # one GPU each: the cores are not the limit
    with pytest.raises(ConfigError, match=r"--nproc 4 on the CPU, but this machine has 2 core\(s\); use at most 2"):
        distributed.check_processes(4, torch.device("cpu"), 100)
    # before the batch: --nproc 3 asked for --batch-size 99 or 102 first, which the cores then refused
    with pytest.raises(ConfigError, match=r"--nproc 3 on the CPU, but this machine has 2 core\(s\)"):
        distributed.check_processes(3, torch.device("cpu"), 100)


def test_a_bad_setting_is_one_error_line_before_any_process_starts(mnist_root, tmp_path, monkeypatch, capfd):
    # The command's main() in this process (a subprocess would spend seconds importing torch to say one line);
    # capfd also takes the output of any process it started.
    from mnistlab.cli import main
    from mnistlab.training import distributed

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distributed.machine, "usable_cores", lambda: 8)  # cores enough: the batch is what fails
    assert main(train_args(mnist_root, "--out", "run", "--nproc", "3")) == 2
    assert capfd.readouterr().err.splitlines() == [
        "mnistlab train: error: train.batch_size (100) must be divisible by the number of processes (3): each "
        "process takes an equal share of every batch; use --batch-size 99 or 102"]
    assert not (tmp_path / "run").exists()


def test_sync_batchnorm_on_the_cpu_is_refused_before_any_process_starts(mnist_root, tmp_path, monkeypatch, capfd):
    from mnistlab.cli import main
    from mnistlab.training import distributed

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("the processes were started"))
    assert main(train_args(mnist_root, "--out", "run", "--nproc", "2", "--set", "train.sync_batchnorm=true")) == 2
    assert capfd.readouterr().err.splitlines() == [
        "mnistlab train: error: train.sync_batchnorm needs CUDA, but this run is on cpu: PyTorch's SyncBatchNorm has "
        "no CPU implementation; set train.sync_batchnorm=false (each process then normalizes with the statistics "
        "of its share of the batch)"]


def test_an_error_found_by_the_processes_is_printed_once_and_exits_2(mnist_root, tmp_path, capfd):
    # Found by rank 0 alone, after the launch: rank 1, waiting for it, loses its peer; that report and
    # torchrun's are not shown, the error is, once, with the exit status of a 1-process run.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt").write_bytes(b"a run was here")
    rc = launched_here(*train_args(mnist_root, "--out", "run", "--nproc", "2"), cwd=tmp_path)
    out, err = capfd.readouterr()
    assert rc == 2, f"{out}\n{err}"
    assert err.splitlines() == ["mnistlab train: error: run already holds a run; continue it with "
                                "`mnistlab train --resume run` or choose another --out"]


def test_the_launch_leaves_nothing_in_the_temporary_directory(mnist_root, tmp_path, monkeypatch, capfd):
    # torchrun made a torchelastic_* folder (its workers' logs and error files) in the temporary directory at
    # every `train --nproc` and never removed it: hundreds piled up under /tmp. TMPDIR reaches torchrun and the
    # workers; the launcher here keeps the temporary directory it had (tempfile caches it), where its own goes.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt").write_bytes(b"a run was here")  # refused by the workers: a quick launch
    assert launched_here(*train_args(mnist_root, "--out", "run", "--nproc", "2"), cwd=tmp_path) == 2
    assert "already holds a run" in capfd.readouterr().err
    assert sorted(p.name for p in tmpdir.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_started_dying_with_parent_end_when_the_parent_is_killed():
    # torchrun (train --nproc) and sweep workers run in sessions of their own; after a SIGKILL of the
    # process that started them (the OOM killer), nothing else would stop them.
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from mnistlab.training.distributed import dying_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
        "                         start_new_session=True, preexec_fn=dying_with_parent())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return  # gone: it was sent SIGTERM when its parent died
        # a zombie (dead, not yet reaped by init) still answers kill(0); its state says so
        if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")


def test_each_rank_seeds_within_torchs_range():
    # seed + 1_000_003 * rank overflowed torch.manual_seed on rank 1 (a traceback from every process of `--nproc 2
    # --seed 18446744073709551615`, when seeds went to 2**64 - 1); the ranks' seeds stay within the 32 bits the CPU
    # generator keeps, where each is its own stream.
    from mnistlab.training.run import rank_seed

    assert rank_seed(5, 0) == 5 and rank_seed(5, 1) != rank_seed(5, 2)
    top = [rank_seed(2**32 - 1, rank) for rank in range(4)]
    assert all(0 <= s < 2**32 for s in top) and len(set(top)) == 4
    for seed in top:
        torch.manual_seed(seed)
