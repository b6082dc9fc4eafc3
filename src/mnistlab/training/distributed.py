"""Several processes training one model: torchrun's environment, the process group, the few collectives.

Under ``torchrun`` (which sets RANK, WORLD_SIZE and LOCAL_RANK) every process runs
the same ``mnistlab train``. Outside it every helper here is the identity for one
process, so the training loop has a single code path.

Rank 0 owns the run folder; the other ranks train and write nothing. The loop
keeps the ranks in step with one small all-reduce per step (the batch's loss and
accuracy sums and any stop signal) and one broadcast per epoch (rank 0's
callback decisions).

>>> world_size(), rank(), is_main()                  # a plain process
(1, 0, True)
>>> all_reduce_sum(torch.tensor([1.0, 2.0])).tolist()
[1.0, 2.0]
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Sequence

import torch
import torch.distributed as dist

from .. import machine
from ..errors import ERROR_FILE, ConfigError


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or anything else that sets its environment)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0, the process that writes the run folder and prints (also true for a plain process)."""
    if active():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"  # before init_process_group, e.g. in the CLI


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process on a machine takes its own GPU: ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def check_processes(nproc: int, device: torch.device, batch_size: int | None = None) -> None:
    """What a run in ``nproc`` processes needs of the device and the batch: checked by every process,
    and by ``mnistlab train --nproc`` before it starts them (one error line rather than one per process)."""
    # On Windows the launcher's Ctrl-C, passed on with Popen.send_signal(SIGINT), raised ValueError ("Unsupported
    # signal") in the handler, and each process's wait to join (_ended_by_a_signal) needs os.set_blocking on a
    # pipe, which Windows' Python before 3.12 lacks: tracebacks, and workers left training on.
    if nproc > 1 and sys.platform == "win32":
        raise ConfigError(f"--nproc {nproc}: multi-process training runs on Linux or macOS, not Windows; "
                          "train in one process (leave out --nproc)")
    if nproc > 1 and device.type == "mps":
        raise ConfigError("multi-process training runs on CUDA (NCCL) or the CPU (gloo), not MPS; "
                          "use --device cpu or a single process")
    # The cores bound the processes on this machine: under torchrun across machines ``nproc`` is WORLD_SIZE,
    # all of them, and 2 machines of 2 cores running 2 processes each were refused for "--nproc 4".
    here = int(os.environ.get("LOCAL_WORLD_SIZE", nproc)) if launched_by_torchrun() else nproc
    cores = machine.usable_cores()
    if device.type == "cpu" and here > cores:  # each one a training process with its own copy of the data
        raise ConfigError(f"--nproc {here} on the CPU, but this machine has {cores} core(s); use at most {cores}")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and here > gpus:  # each takes cuda:LOCAL_RANK: the ones past the last had none
        raise ConfigError(f"--nproc {here} on CUDA, but this machine has {gpus} GPU(s); use at most {gpus} "
                          "(one process per GPU)")
    # After the count is known to fit: --nproc 3 on 2 cores asked for --batch-size 255 or 258 first, then
    # refused either for the cores.
    if batch_size is not None and batch_size % nproc:
        near = sorted({max(nproc, batch_size // nproc * nproc), (batch_size // nproc + 1) * nproc})
        raise ConfigError(f"train.batch_size ({batch_size}) must be divisible by the number of processes "
                          f"({nproc}): each process takes an equal share of every batch; use --batch-size "
                          + " or ".join(map(str, near)))


def check_sync_batchnorm(sync_batchnorm: bool, device: torch.device) -> None:
    """train.sync_batchnorm needs CUDA: checked by the trainer, and by ``mnistlab train --nproc`` before it starts
    the processes (after torchrun had started them, they spent seconds loading torch to refuse it)."""
    if sync_batchnorm and device.type != "cuda":
        raise ConfigError(f"train.sync_batchnorm needs CUDA, but this run is on {device.type}: PyTorch's "
                          "SyncBatchNorm has no CPU implementation; set train.sync_batchnorm=false "
                          "(each process then normalizes with the statistics of its share of the batch)")


def init(device: torch.device) -> bool:
    """Join torchrun's process group (NCCL for CUDA, gloo for the CPU); False (and nothing done) outside torchrun."""
    if not launched_by_torchrun() or active():
        return False
    check_processes(int(os.environ["WORLD_SIZE"]), device)
    with _ended_by_a_signal():
        if device.type == "cuda":
            torch.cuda.set_device(local_device(device))
            dist.init_process_group("nccl", device_id=local_device(device))
        else:
            dist.init_process_group("gloo")
    return True


_STOPPING = {int(s) for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM))}


@contextlib.contextmanager
def _ended_by_a_signal():
    """End this process (exit status 128 + the signal) if SIGINT, SIGTERM or SIGHUP comes while the block runs:
    ``init_process_group`` waits in C++ for every rank to join, for up to 30 minutes, and Python's handler runs
    only once it returns. A Ctrl-C while the processes start ended the ones still importing torch, and a rank
    already waiting for them went on waiting, so the run hung without a word (torchrun waits an hour for its
    workers after passing a signal on, see SHUTDOWN_TIMEOUT_S). The C-level handler writes the signal's number
    to the wakeup fd even then; a thread here reads it. Nothing has been written by then (the run folder comes
    after), so ending at once loses nothing."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set the fd
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    done, ending = threading.Event(), threading.Lock()

    def end(signum: int, frame=None) -> None:
        ending.acquire()  # the first of the two ways below ends the process; the other waits for that
        if is_main():
            print(f"mnistlab train: interrupted by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def watch() -> None:
        while not done.is_set():
            signums = [n for n in os.read(read_end, 64) if n in _STOPPING]  # 0: the block ended
            if signums and not done.is_set():
                end(signums[0])

    # Python's handler too ends the process, where the join's phases run Python code between the C++ calls: a
    # KeyboardInterrupt raised there unwound through half-made stores and process groups.
    handlers = {signum: signal.signal(signum, end) for signum in _STOPPING}
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="mnistlab-signal-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        os.write(write_end, b"\0")
        watcher.join()
        os.close(read_end)
        os.close(write_end)


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo is given CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over all ranks (a new tensor on ``t``'s device); ``t`` itself for one process."""
    if world_size() == 1:
        return t
    buf = t.to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object); ``obj`` itself for one process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` for one process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every rank is here (nothing for one process)."""
    if world_size() > 1:
        dist.barrier()


def _worker_env(nproc: int) -> dict[str, str]:
    """Our environment, with the cores shared out: torchrun would give every process one thread
    (and print a banner saying so) unless OMP_NUM_THREADS is set; ``train.threads`` still wins."""
    env = dict(os.environ)
    if not _omp_threads_set(env.get("OMP_NUM_THREADS", "")):
        env["OMP_NUM_THREADS"] = str(max(1, machine.usable_cores() // nproc))
    return env


def _omp_threads_set(value: str) -> bool:
    """Whether OpenMP takes ``value`` of OMP_NUM_THREADS: a count of 1 or more (the first of a list, ``4,2``).
    Anything else (empty, as `=$UNSET` gives, ``0``, ``auto``) it ignores, with a "libgomp: Invalid value" line
    from every process, and each process took all the cores, as if nothing had been set.

    >>> [_omp_threads_set(v) for v in ("4", " 2 ", "4,2", "", "0", "auto", "-1")]
    [True, True, True, False, False, False, False]
    """
    try:
        return int(value.split(",")[0]) >= 1
    except ValueError:
        return False


SHUTDOWN_TIMEOUT_S = 3600


_RANK_PREFIX = re.compile(rb"^\[rank\d+\]: ")  # torch's prefix of a worker's traceback once it joined the group
_CHAINED = (b"During handling of the above exception", b"The above exception was the direct cause")
_EXCEPTION_LINE = re.compile(rb"^[A-Za-z_][\w.]*(: |:?\r?\n?$)")  # "KeyboardInterrupt", "RuntimeError: ..."


# gloo's error in a rank whose peer is gone: after a signal, one that the signal ended before its training loop
# (loading the data, tracing the graph), while this rank, already in the loop, waited for it in a collective.
_PEER_GONE = (b"Connection closed by peer", b"Connection reset by peer")


# torchrun's log of a worker's end; a negative exit code is a signal that ended it (-9: SIGKILL, the OOM killer's)
_FAILED = re.compile(rb"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")


def _peer_gone(line: bytes) -> bool:
    return any(gone in line for gone in _PEER_GONE)


def _of_the_signal(line: bytes) -> bool:
    """Whether a traceback's last line is the signal's doing: torchrun's ``SignalException``, the
    ``KeyboardInterrupt`` of a process that Ctrl-C reached before it set a handler (still importing torch),
    or a rank's loss of a peer that the signal ended."""
    return b"SignalException" in line or line.startswith(b"KeyboardInterrupt") or _peer_gone(line)


def _relay(stream: IO[bytes], error_file: Path, received: Sequence[int] = (),
           killed: list[tuple[int, int]] | None = None, failed: list[int] | None = None) -> None:
    """Pass the workers' and torchrun's stderr on, line by line as it comes, until a worker has left an
    error: what follows is the other ranks' and torchrun's reaction to its exit (a lost peer's traceback,
    torchrun's ChildFailedError report), not news to the user. After a signal we passed on (``received``),
    the tracebacks of the signal itself are left out too: torchrun's (``SignalException``, with the one chained
    to it when a second signal cut its wait short), and the ``KeyboardInterrupt`` of a process that was still
    starting (torchrun and every worker import torch for seconds; the workers' tracebacks come interleaved,
    in pieces), and so are torchrun's log lines of passing the signal on ("Received 2 death signal, shutting down
    workers", "Sending process ... closing signal SIGINT"): the run stopped as asked, and the resume line
    above them is what matters. A traceback among them that ends in another error is shown whole.

    Without a signal of ours, a worker that a signal ended (SIGKILL from the OOM killer, a segfault) is put in
    ``killed`` as (local rank, signal number), for :func:`launch` to say in one line; what follows torchrun's log
    of it (its ChildFailedError report) and the other ranks' tracebacks of the lost peer are left out: they
    buried that cause under 80 lines, the first of them rank 0's "Connection reset by peer".

    So for a worker that failed of an error of its own (a bug: exit status 1 and its traceback, shown): torchrun's
    log line of its failure is shown, its local rank put in ``failed``, and what follows is left out (torchrun's
    50-line traceback of ChildFailedError with its report, the other ranks' tracebacks of the lost peer), which
    made 130 lines and read as torchrun itself crashing."""

    def ends_quietly(line: bytes) -> bool:  # a traceback that ends so is left out (``received`` fills as it runs)
        return _of_the_signal(line) if received else _peer_gone(line)

    elastic: list[bytes] = []  # torchrun's log lines, held until a line is written: a kill may follow them
    ended = False  # a worker was killed by a signal: the rest is the reaction to it
    held: list[bytes] = []  # tracebacks begun (several at once, or chained), until all have ended
    # Without a signal of ours, the tracebacks of a lost peer, until the stream ends: left out if a worker turns
    # out to have been killed, else shown then (a peer lost for another reason, a node of a multi-node run gone)
    lost: list[bytes] = []
    unended = 0  # tracebacks in ``held`` whose exception line has not come yet
    other = False  # one of them ended in an error of its own, not the signal's
    shown = False  # a traceback that ended in an error of its own has been written
    chained = False  # all have ended, and "During handling of the above exception" says another follows

    def write(lines: list[bytes]) -> None:
        nonlocal elastic
        sys.stderr.buffer.write(b"".join([*elastic, *lines]))  # torchrun's log lines held until now come first
        sys.stderr.flush()
        elastic = []

    def flush() -> None:
        nonlocal held, unended, other, chained, shown
        if other:
            write(held)
            shown = True
        elif not received:
            lost.extend(held)
        held, unended, other, chained = [], 0, False, False

    for line in iter(stream.readline, b""):
        if error_file.exists() or ended:
            continue
        if received and b"torch/distributed/elastic/" in line:  # its log of passing the signal on
            continue
        if b"torch/distributed/elastic/" in line:
            killed_by = _FAILED.search(line)
            if killed_by and int(killed_by.group(1)) < 0 and killed is not None:
                killed.append((int(killed_by.group(2)), -int(killed_by.group(1))))
                ended, elastic = True, []  # ("Sending process ... closing signal SIGTERM" to the others, too)
            elif killed_by and 0 < int(killed_by.group(1)) < 128 and (shown or other) and failed is not None:
                # Its error is on the screen, or held (``other``) and written now, this line after it; the rest is
                # the reaction to it. Not so for a lost peer alone, the only word of a node gone.
                failed.append(int(killed_by.group(2)))
                elastic = []
                flush()  # (a lost peer's traceback held goes to ``lost``, not shown)
                write([line])
                ended = True
            else:  # in its place among the tracebacks held, else until the next line is written
                (held if held else elastic).append(line)
            continue
        body = _RANK_PREFIX.sub(b"", line)
        if received and body.startswith(b"Could not import runpy module"):  # Python's, of a signal at its start
            continue
        # Anywhere in the line: processes that print tracebacks at once interleave them in pieces, not lines.
        begun = line.count(b"Traceback (most recent call last)")
        if begun:
            if held and not unended and not chained:  # a traceback of its own, after those held
                flush()
            held, elastic = [*held, *elastic, line], []  # torchrun's lines before it go (or stay) with it
            unended, chained = unended + begun, False
            continue
        if held:
            if not body.strip() or body.startswith(_CHAINED) or (unended and body.startswith((b" ", b"\t"))):
                held.append(line)  # a frame, or what joins two chained tracebacks
                chained = chained or (not unended and body.startswith(_CHAINED))
                continue
            if unended:
                held.append(line)
                if ends_quietly(body) or _EXCEPTION_LINE.match(body):  # the exception line that ends one
                    unended -= 1
                    other = other or not ends_quietly(body)
                continue  # else a piece of a frame, cut off by another process's (the indentation, the newline)
            flush()  # all have ended: a line of its own follows
        write([line])
    # A traceback the stream ended inside is shown, unless a signal of ours cut it short (as before: all was shown)
    other = other or (unended > 0 and not received and not ended)
    flush()
    if (elastic or lost) and not ended:
        write(lost)


def _killed_line(nproc: int, local_rank: int, signum: int, run: str | None = None) -> str:
    """What to say of a worker that a signal ended: which, by what, and where the run stands (``run``: the run
    folder, where the command line named it; else RUN, the folder the run's first line named).

    >>> _killed_line(2, 1, 9)[:66]
    'process 1 of 2 was killed by SIGKILL (out of memory? `dmesg` says '
    """
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    why = " (out of memory? `dmesg` says whether the kernel's OOM killer ended it)" if name == "SIGKILL" else ""
    return (f"process {local_rank} of {nproc} was killed by {name}{why}, and the others were stopped; the run "
            "folder keeps what was saved before (last.ckpt, at the last epoch's end): continue with "
            f"`mnistlab train --resume {shlex.quote(run) if run else 'RUN'} --nproc {nproc}`, or, if no epoch "
            "ended, start the run anew")


_PR_SET_PDEATHSIG = 1


def dying_with_parent():
    """For Popen's ``preexec_fn`` on Linux (None elsewhere): torchrun is in a session of its own, so nothing
    else would stop it (and the workers, which would train on and hold the run folder) when this process
    dies of a signal it cannot pass on (SIGKILL, the OOM killer). Linux then sends it SIGTERM, which the
    workers take as they take a Ctrl-C. The C library is loaded here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return lambda: libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(nproc: int, argv: list[str], run: str | None = None) -> int:
    """Run ``mnistlab ARGV`` in ``nproc`` processes on this machine through torchrun; its exit status. ``run``
    is the run folder where ``--out`` or ``--resume`` names it (for the way on after a worker is killed).

    torchrun runs in a session of its own,
    so a Ctrl-C in the terminal reaches only this process, which passes each
    SIGINT/SIGTERM on exactly once (a SIGHUP, the terminal closing, as a SIGTERM): torchrun
    forwards it to every worker, the workers agree on the step to stop at, rank 0 writes
    last.ckpt, and this returns 130 (143, 129). Were torchrun in our process group it would
    get the terminal's signal and ours, and a second signal makes it give up waiting for the
    workers. A worker's error (a MnistlabError, see :func:`mnistlab.errors.leave_error`) is
    printed once here, and the exit status is 2, as in one process.
    """
    # torchrun waits this long for the workers after passing a signal on, then kills them (its default, 30 s,
    # cut a validation or a checkpoint write short and lost the epoch). A second Ctrl-C still ends them at once.
    with tempfile.TemporaryDirectory(prefix="mnistlab-launch-") as tmp:
        # torchrun's folder for the workers' logs and error files, removed with ours: left to itself it made a
        # torchelastic_* folder in the temporary directory at every launch and never removed it.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--shutdown_timeout={SHUTDOWN_TIMEOUT_S}", "--log-dir", str(Path(tmp) / "torchrun"),
               "-m", "mnistlab", *argv]
        error_file = Path(tmp) / "error"
        env = {**_worker_env(nproc), ERROR_FILE: str(error_file)}
        proc = subprocess.Popen(cmd, start_new_session=True, env=env, stderr=subprocess.PIPE,
                                preexec_fn=dying_with_parent())
        received: list[int] = []
        killed: list[tuple[int, int]] = []
        failed: list[int] = []
        relay = threading.Thread(target=_relay, args=(proc.stderr, error_file, received, killed, failed),
                                 daemon=True)
        relay.start()

        def forward(signum, frame) -> None:
            received.append(signum)
            proc.send_signal(signum if signum in (signal.SIGINT, signal.SIGTERM) else signal.SIGTERM)

        passed_on = [signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
        # an ignored one (nohup's SIGHUP) stays ignored, as in one process (fit's _SignalGuard)
        old = {s: signal.signal(s, forward) for s in passed_on if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            rc = proc.wait()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        relay.join()
        if error_file.exists():
            print(f"mnistlab train: error: {error_file.read_text()}", file=sys.stderr)
            return 2
        if killed and not received:
            print(f"mnistlab train: error: {_killed_line(nproc, *killed[0], run)}", file=sys.stderr)
            return 128 + killed[0][1]
        if failed and not received and rc != 0:  # its traceback is above; torchrun's report of it is not
            print(f"mnistlab train: process {failed[0]} of {nproc} failed with the error above, and the others "
                  "were stopped", file=sys.stderr)
    # torchrun itself ends with an error after a signal, however cleanly the workers stopped.
    return 128 + received[0] if received and rc != 0 else rc
