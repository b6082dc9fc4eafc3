"""A whole run: folder, data, model, callbacks, fit, final test, summary.json.

This is what ``mnistlab train`` calls; notebooks can call :func:`train` too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shlex
import shutil
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from .. import jsonout
from ..callbacks import Callback, TensorBoard, build_callbacks
from ..callbacks.base import check_callbacks
from ..callbacks.early_stopping import early_stopping_warnings
from ..config import (OPTIMIZER_READS, RUN_FILE_NAMES, RUN_FOLDER_NAMES, SEED_LIMIT, AugmentConfig, Config,
                      config_to_dict, config_to_toml, unread_settings)
from ..data import DataBundle, load_data
from ..data.datasets import quiet_downloads
from ..errors import CheckpointError, ConfigError, MnistlabError, RunDirError, leave_error
from ..folders import expand_home, missing_folders, probe_write, remove_empty, shell_path
from .. import machine
from ..machine import cpu_name
from ..models import build_model, model_options
from ..models.summary import count_parameters
from ..report.runfolder import PREDICTIONS_FILE, is_run_folder
from .checkpoint import CheckpointWriteError, atomic_write, model_from_checkpoint, read_checkpoint, resume_file
from . import distributed
from .allocator import kept_warning
from .display import Display, clear_progress_line, divert_to_devnull, progress_safe_warnings
from .evaluate import Evaluation, evaluate
from .finetune import check_frozen_head, init_from_checkpoint, read_init_checkpoint, trainable_line
from .fit import (
    VAL_SIZE_NEEDED,
    FitResult,
    Trainer,
    TrainingInterrupted,
    check_resume,
    deterministic_errors,
    deterministic_mode,
    emulated_precision,
    place_in_run,
    resolve_device,
    signals_raise,
)
from .schedules import max_steps_warnings, schedule_warnings


@dataclass
class RunResult:
    run_dir: Path | None  # None on the ranks other than 0 of a multi-process run
    fit: FitResult | None
    test: Evaluation | None
    summary: dict[str, Any]


def default_run_dir(model_name: str, root: str | Path = "runs") -> Path:
    """Create and return ``runs/<date>-<time>-<model>``, with a counter if that exists already.

    The folder is created here, atomically, so that two runs started in the same
    second get distinct folders rather than one of them being refused.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{model_name}"
    path, i = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        except OSError as e:
            raise RunDirError(f"cannot create run folder {path}: {e.strerror or e}") from None


class RunLock:
    """``run.lock`` naming our process: a second run into the same folder is refused.

    The lock holds the pid and, on Linux, the process's start time: a pid is reused
    (after a reboot, a container restart, or in a folder copied from another machine),
    the pair is not. A lock whose process is gone (kill -9), or whose pid now belongs to
    a process started at another time, is stale and taken over. So is one holding this
    process's own pid and start time that this process does not hold (a lock written
    without a start time, from an older version, counts as ours when its pid is ours).
    A lock this process does hold (a run in another thread, or one inside a callback)
    refuses like any other.

    The lock file is made complete under a temporary name and linked into place, so no
    other process can read it empty; a stale one is renamed away before it is deleted,
    so that a lock another process made meanwhile is put back, not deleted.
    """

    _held: set[str] = set()  # the locks this process holds, by real path
    _guard = threading.Lock()  # makes a thread's check-and-take one step for the others

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "run.lock"
        self._key = os.path.realpath(self.path)

    def __enter__(self) -> "RunLock":
        mine = _lock_text(os.getpid())
        with RunLock._guard:
            for _ in range(3):
                try:
                    self._create(mine)
                except FileExistsError:
                    self.refuse_if_held()
                    self._remove_stale()
                    continue
                except OSError as e:
                    raise RunDirError(f"cannot write to run folder {self.path.parent}: {e.strerror}") from None
                RunLock._held.add(self._key)
                return self
        raise RunDirError(f"could not take the lock {self.path}; if no mnistlab run uses {self.path.parent}, delete "
                          "the lock")

    def _create(self, text: str) -> None:
        """Make the lock with ``text`` in it, atomically: FileExistsError if there is one."""
        tmp = self.path.with_name(f".run.lock.new-{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(text)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: create-exclusive, then write
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_stale(self) -> None:
        judged = self._text()
        aside = self.path.with_name(f".run.lock.stale-{os.getpid()}-{threading.get_ident()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process removed it first
        except PermissionError:  # Windows: another process has it open (judging it too); __enter__ tries again
            return
        if aside.read_text() != judged:  # another process took the lock since we looked: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        owner = _parse_lock(judged)
        if owner is not None:  # a killed run may have left half-written temporary files (the report's in plots/)
            for folder in (self.path.parent, self.path.parent / "plots"):
                for tmp in folder.glob(f".*.tmp-{owner[0]}"):
                    tmp.unlink(missing_ok=True)

    def refuse_if_held(self) -> None:
        """Raise RunDirError if a live process other than this one, or a run in this one, holds the lock."""
        owner = _parse_lock(self._text())
        if owner is None:
            return
        pid, started = owner
        ours = pid == os.getpid() and started in (None, _process_start(pid))
        if ours and self._key in RunLock._held:
            raise RunDirError(
                f"{self.path.parent} is in use by another mnistlab run in this process; wait for it to finish"
            )
        if not ours and process_alive(pid) and started in (None, _process_start(pid)):
            raise RunDirError(
                f"{self.path.parent} is in use by another mnistlab run (pid {pid}); wait for it to finish. If no "
                f"mnistlab run uses the folder, delete {self.path}"
            )

    def _text(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        with RunLock._guard:
            RunLock._held.discard(self._key)
            if self._text() == _lock_text(os.getpid()):
                try:
                    self.path.unlink(missing_ok=True)
                except OSError:  # a folder made read-only mid-run: the error that ended the run is the one to show
                    pass  # (the lock names this process, so the next run finds it stale and takes it over)


def _process_start(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (Linux's /proc); None where that is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) ": field 3 onwards
    return fields[19] if len(fields) > 19 else None  # field 22, starttime


def _lock_text(pid: int) -> str:
    started = _process_start(pid)
    return f"{pid}" if started is None else f"{pid} {started}"


def _parse_lock(text: str) -> tuple[int, str | None] | None:
    """(pid, start time or None) from a lock's text; None for an empty or unreadable one (stale).

    >>> _parse_lock("1234 98765"), _parse_lock("1234"), _parse_lock("")
    ((1234, '98765'), (1234, None), None)
    """
    parts = text.split()
    if not parts or not parts[0].isdigit() or len(parts) > 2:
        return None
    return int(parts[0]), (parts[1] if len(parts) == 2 else None)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one we may not signal counts as alive)."""
    if sys.platform == "win32":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_ERROR_ACCESS_DENIED = 5
_STILL_ACTIVE = 259


def _windows_process_alive(pid: int) -> bool:
    """:func:`process_alive` on Windows, asked of the kernel without touching the process. There
    ``os.kill(pid, 0)`` is TerminateProcess with exit code 0: it ended the live run whose lock or temporary
    file was being judged (or whatever process had the pid now), and for a pid that is gone it raised
    OSError [WinError 87] rather than ProcessLookupError, a traceback."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:  # no such process, or one of another user that we may not ask (which exists)
        return ctypes.get_last_error() == _ERROR_ACCESS_DENIED
    try:
        code = ctypes.c_ulong()
        # a process that has ended but whose handle another process keeps open still opens: its exit code says
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == _STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# Files and folders a run writes besides last.ckpt and its lock: a folder holding any of them holds (part of)
# another run, or another run's report (`mnistlab report RUN --out DIR`), which a run there would replace.
_RUN_FILES = tuple(name for name in RUN_FILE_NAMES + RUN_FOLDER_NAMES if name not in ("last.ckpt", "run.lock"))


def prepare_run_dir(path: Path, resume: bool, other: str = "choose another --out") -> None:
    """Create the folder and check, before any training, that it is writable and free.

    Free means: no live run holds its lock and, unless resuming, no earlier run
    left files in it -- two runs are never mixed in one folder. ``other`` is how the caller picks another folder.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe_write(path)
    except OSError as e:
        raise RunDirError(f"cannot write to run folder {path}: {e.strerror or e}") from None
    RunLock(path).refuse_if_held()
    if resume:
        return
    if (path / "last.ckpt").exists():
        raise RunDirError(
            f"{path} already holds a run; continue it with `{resume_command(path)}` or {other}"
        )
    leftovers = [name for name in _RUN_FILES if (path / name).exists()]
    if leftovers:
        raise RunDirError(
            f"{path} already holds files of another run ({', '.join(leftovers)}) but no last.ckpt "
            "to continue from (it stopped before finishing its first epoch, or before last.ckpt was written; or "
            f"they are a report, written there by `mnistlab report --out`); delete them or {other}"
        )
    # `--out runs` (for "into runs/"): the run's files lay beside the runs there, and `compare runs` then took
    # the folder for this one run and left the others out
    with contextlib.suppress(OSError):
        runs = sorted(p.name for p in path.iterdir() if is_run_folder(p))
        if runs:
            shown = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
            raise RunDirError(f"{path} holds run folders ({shown}): this run's files would lie among them, and "
                              f"compare and report would take the folder for this one run; {other} (a folder of "
                              f"its own, such as {path / 'NAME'})")


def check_free_space(path: Path, model: torch.nn.Module, cfg: Config) -> None:
    """Refuse to start when the disk cannot hold the checkpoints this run will surely write.

    last.ckpt, the training state, holds the weights, up to two optimizer moments
    (Adam), and one more copy each for ``restore_best_weights`` (the best epoch's
    weights) and ``[ema]`` (the average); it is rewritten through a temporary file
    as large. best.ckpt, ema.ckpt with ``[ema]`` and the ``save_top_k`` files (no
    more than the epochs) hold one model each. Files kept every n epochs are not
    counted: their number is not known in advance. A resumed run's last.ckpt,
    best.ckpt and ema.ckpt are there already, and are only replaced: their space
    counts as free (without that, a run that had started on a disk could not be
    resumed there).
    """
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    meta = 1 << 20  # 1 MiB a file for the config, history and metadata
    state = (3 + cfg.early_stopping.restore_best_weights + cfg.ema.enabled) * weights + meta
    models = 1 + min(cfg.checkpoint.save_top_k, cfg.train.epochs) + cfg.ema.enabled  # one top-k file per epoch at most
    need = 2 * state + models * (weights + meta)
    replaced = sum(f.stat().st_size for f in (path / name for name in ("last.ckpt", "best.ckpt", "ema.ckpt"))
                   if f.is_file())
    free = shutil.disk_usage(path).free + replaced
    if free < need:
        raise RunDirError(
            f"not enough free space for run folder {path}: {free / 2**20:.1f} MiB free"
            + (f" (with the {replaced / 2**20:.1f} MiB of the checkpoints it replaces)" if replaced else "")
            + f", but its checkpoints need about {need / 2**20:.1f} MiB; free some space"
            + ("" if replaced else " or choose another --out")
        )


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` atomically into the run folder; a failure is a RunDirError naming the file."""
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise RunDirError(f"cannot write {path}: {e.strerror or e}") from None


def resume_command(run_dir: str | Path, nproc: int = 1) -> str:
    """The command that continues the run in ``run_dir``, as messages tell the user to run it (the folder
    quoted as one shell word), in the ``nproc`` processes it trained in: interrupted inside an epoch, a run
    resumed in another number of them may be refused (the epoch's batches would be others).

    >>> resume_command("runs/a"), resume_command("my runs/rün 1", nproc=2)
    ('mnistlab train --resume runs/a', "mnistlab train --resume 'my runs/rün 1' --nproc 2")
    >>> resume_command("-x")  # not a flag
    'mnistlab train --resume ./-x'
    """
    return f"mnistlab train --resume {shell_path(run_dir)}" + (f" --nproc {nproc}" if nproc > 1 else "")


def _processes_here() -> int:
    """This run's processes, for its resume command: all of them, unless they span machines (a multi-node
    torchrun, started by hand on each, with its own flags: ``--nproc`` would start them all on one)."""
    world = distributed.world_size()
    return world if int(os.environ.get("LOCAL_WORLD_SIZE", world)) == world else 1


# Where train()'s warnings go: None prints them as ``mnistlab train``'s; a command that runs train() for its own
# ends (``mnistlab bench``) sets a function of its own, which says whose warning it is and how often.
warning_sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("warning_sink",
                                                                                          default=None)


@contextlib.contextmanager
def warnings_as(command: str) -> Iterator[Callable[[str], None]]:
    """In the block, train()'s warnings print as ``mnistlab COMMAND: warning: ...``, each text once (a command
    that runs train() many times, a sweep or bench, has one user to tell); yields that printer for the
    command's own warnings."""
    shown: set[str] = set()

    def warn(text: str) -> None:
        if text not in shown:
            shown.add(text)
            print(f"mnistlab {command}: warning: {text}", file=sys.stderr, flush=True)

    token = warning_sink.set(warn)
    try:
        yield warn
    finally:
        warning_sink.reset(token)


def _warn(text: str) -> None:
    """A warning of ``mnistlab train`` on stderr (shown with --quiet too), or to :data:`warning_sink`."""
    clear_progress_line()  # on a line of its own, not at the end of a progress bar on the terminal
    sink = warning_sink.get()
    if sink is not None:
        sink(text)
        return
    print(f"mnistlab train: warning: {text}", file=sys.stderr, flush=True)


def _fp16_entry(trainer: Trainer) -> dict[str, int]:
    """summary.json's skipped_steps in fp16: the steps whose gradients overflowed, which the loss scale skipped
    (a few at the start are normal: the scale starts high and comes down to fit). Also in a run resumed in
    another precision after fp16 skipped some."""
    fp16 = trainer.precision == "fp16" or trainer.skipped_steps > 0
    return {"skipped_steps": trainer.skipped_steps} if fp16 else {}


def _compile_entry(cfg: Config, seconds: float) -> dict[str, float]:
    """summary.json's compile_seconds: there with train.compile, or where a resumed part compiled."""
    return {"compile_seconds": seconds} if cfg.train.compile or seconds else {}


def write_json(path: Path, obj: Any) -> None:
    write_file(path, jsonout.dumps(obj, indent=2).encode() + b"\n")  # a diverged run's NaN loss as null


def train(
    cfg: Config,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks: Iterable[Callback] = (),
    quiet: bool = False,
    report: bool = True,
) -> RunResult:
    """Train as ``cfg`` says, into a run folder, and test the best checkpoint at the end.

    ``report=False`` (or ``train.report = false`` in ``cfg``) leaves out report.html and its plots
    (seconds of plotting), for sweeps and runs whose folder is thrown away, like the benchmarks';
    ``mnistlab report`` can write it later.

    ``resume`` is a run folder (or its last.ckpt) to continue, in that folder (``out`` is then left out, or
    names the same folder); ``cfg`` must then be the stored config with the user's changes applied (see the CLI).

    The result's ``fit.model`` is the final weights, in eval mode as ``fit`` gives it back; ``test`` and
    ``summary`` are of the model the run tested (best.ckpt where there is one).

    The caller's torch thread count, global random state, grad mode and deterministic settings are put back
    when it returns or raises. What stays for the rest of the process: on a CPU under Linux,
    ``train.reuse_memory`` (on by default) sets glibc's malloc to keep freed memory (up to 1 GiB), which
    cannot be undone.

    Under torchrun every process calls this: rank 0 makes and writes the run
    folder, reads the checkpoints and sends them to the other ranks, which train
    and write nothing (``run_dir`` is then None in their result).

    >>> result = train(Config(), out="runs/demo")          # doctest: +SKIP
    >>> result.summary["test_accuracy"]                     # doctest: +SKIP
    0.9912
    """
    wall0 = time.perf_counter()
    check_config_type(cfg, "train")
    check_folder_given(out, "train", "out", "leave it out for runs/<date>-<time>-<model>")
    callbacks = check_callbacks(callbacks)  # before a folder is made: a callback that cannot be called fails now
    model_options(cfg.model.name)  # an unknown model name fails here, before a folder is made or data is read
    if cfg.data.val_size < 1:  # the data layer takes 0 (all images to train on); a run must choose on something
        raise ConfigError(VAL_SIZE_NEEDED)
    cfg = _absolute_paths(cfg)
    report = report and cfg.train.report
    with (process_state_kept(), callback_messages(not quiet), progress_safe_warnings(),
          quiet_downloads() if quiet else contextlib.nullcontext(),
          deterministic_mode(cfg.train.deterministic),  # from building the model to the final test, not only fit
          # SIGTERM and SIGHUP raise as Ctrl-C does before and after the trainer's steps, which its own handler
          # stops between: they ended the process without a word while the data loaded or the test ran.
          signals_raise()):
        return _train_here_or_with_others(cfg, out, resume, callbacks, quiet, report, wall0)


def check_config_type(cfg: Any, caller: str) -> None:
    """A TypeError unless ``cfg`` is a :class:`Config` (a dict failed deep inside the run with an
    AttributeError); its sections are checked when it is built (``Config.__post_init__``)."""
    if not isinstance(cfg, Config):
        raise TypeError(f"{caller}(): the config must be a mnistlab.Config (Config(), load_config(path), "
                        "apply_overrides(Config(), ['train.epochs=3']) or mnistlab.config.config_from_dict({...})), "
                        f"got {type(cfg).__name__}")


def check_folder_given(path: Any, caller: str, name: str, otherwise: str) -> None:
    """A ConfigError for an empty folder name, as the CLI's ``--out ""`` is one: ``Path("")`` is the current
    folder, so ``train(cfg, out=os.environ.get("OUT", ""))`` wrote a run among the notebook's files (an empty
    ``resume`` is refused by :func:`~mnistlab.training.checkpoint.resume_file`)."""
    if isinstance(path, str) and not path.strip():
        raise ConfigError(f"{caller}(): {name}={path!r} names no folder (it would be the current one); {otherwise}")


@contextlib.contextmanager
def process_state_kept():
    """Put back what a run sets for the whole process: torch's thread count and global RNGs (CPU, CUDA).

    A run seeds the global RNG (its initial weights, dropout) and may set ``train.threads``;
    a caller of the Python API then gets its own random stream and thread count back, and
    a second run with ``train.threads`` unset gets PyTorch's default, not the first run's.
    In the block gradients are on and inference mode off, whatever the caller's block around it
    (``with torch.no_grad(): train(cfg)`` failed in the first step with PyTorch's "element 0 of
    tensors does not require grad"); both are the calling thread's and come back with the block.
    """
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    # torch.manual_seed seeds the GPUs' generators too. Those already started get their states back; started
    # during the run (CUDA starts lazily), they are seeded as the caller's torch.manual_seed would have seeded
    # them at their start (torch.initial_seed(): the last seed it set, or torch's default).
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    seed = torch.initial_seed()
    try:
        with torch.inference_mode(False), torch.enable_grad():  # (inference mode off: weights made in it cannot train)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        elif torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(seed)


class _PipeSafeHandler(logging.StreamHandler):
    """A StreamHandler that, where the reader of its stream left, sends the rest to /dev/null as Display does
    (logging's own handling prints a "--- Logging error ---" traceback on stderr instead)."""

    def emit(self, record: logging.LogRecord) -> None:
        clear_progress_line()  # a message in mid-epoch began at the end of the progress bar
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            divert_to_devnull(self.stream)
        else:
            super().handleError(record)


@contextlib.contextmanager
def callback_messages(show: bool, *, always: bool = False):
    """Print the callbacks' messages (learning-rate changes, restored weights) on stdout in the block.

    Only where nothing else would, unless ``always`` (the CLI): a user's ``logging`` setup keeps
    them otherwise. The handler goes again afterwards, so repeated runs print each line once. On the other
    ranks of a multi-process run it prints nothing (rank 0 prints for them all) and, where no logging is set up,
    keeps logging's last resort from printing their warnings.
    """
    log = logging.getLogger("mnistlab")
    if not distributed.is_main() and not log.hasHandlers():
        # With no handler at all, logging's last resort would print the warnings on stderr, each rank its own
        # copy with its own numbers; and a script of one's own under torchrun printed every line once per rank.
        silence = logging.NullHandler()
        log.addHandler(silence)
        try:
            yield
        finally:
            log.removeHandler(silence)
        return
    if not show or not distributed.is_main() or (log.hasHandlers() and not always):
        yield
        return
    handler, level = _PipeSafeHandler(sys.stdout), log.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _train_here_or_with_others(cfg: Config, out, resume, callbacks: Iterable[Callback], quiet: bool, report: bool,
                               wall0: float) -> RunResult:
    if distributed.init(resolve_device(cfg.train.device)):  # torchrun started this process: join the others
        try:
            with deterministic_errors(cfg.train.deterministic):  # a MnistlabError, for the handler below
                result = _train(cfg, out, resume, callbacks, quiet, report, wall0)
            # The other ranks wait here while rank 0 tests and writes the report: a rank that tore down
            # the process group (and exited) while rank 0 still held it now and then aborted in gloo's
            # teardown ("terminate called without an active exception"), failing the whole run.
            distributed.barrier()
            return result
        except MnistlabError as e:
            # Left for the launcher before the process group goes down: the other ranks then lose this one,
            # and their reports of that are not shown once an error is left (see distributed.launch).
            leave_error(str(e))
            raise
        finally:
            distributed.shutdown()
    with deterministic_errors(cfg.train.deterministic):
        return _train(cfg, out, resume, callbacks, quiet, report, wall0)


def settings_warnings(cfg: Config) -> list[str]:
    """What in ``cfg`` will not act in a run of it, or not as meant: early-stopping, schedule and optimizer
    settings their criterion, schedule or optimizer does not read (momentum for Adam), a stopping rule that
    cannot stop so early, flips of digits, and [augment] settings with augmentation off."""
    flips = cfg.augment.enabled and cfg.augment.hflip and cfg.data.dataset != "fashion-mnist"
    off = [key for key, value in vars(cfg.augment).items()
           if key != "enabled" and value != getattr(AugmentConfig(), key)] if not cfg.augment.enabled else []
    return [*early_stopping_warnings(cfg.early_stopping, cfg.train.epochs),
            *schedule_warnings(cfg.schedule, cfg.train.epochs),
            *unread_settings("optimizer", cfg.optimizer, OPTIMIZER_READS),
            *([f"augment.hflip mirrors {cfg.data.dataset}'s training images, where a mirrored one is another symbol "
               "or none (it suits fashion-mnist)"] if flips else []),
            *([f"{', '.join(f'augment.{k}' for k in off)} {'is' if len(off) == 1 else 'are'} set, but [augment] "
               "enabled = false: no image is transformed (flips alone: enabled = true with rotation, scale and "
               "shift 0)"] if off else [])]


def thread_warning(threads: int | None, device: torch.device) -> str | None:
    """A warning for ``train.threads`` above the CPU cores (those of all processes with --nproc): PyTorch's
    own choice is one thread per core, and more cannot all run at once."""
    cores, world = machine.usable_cores(), distributed.world_size()
    if device.type != "cpu" or threads is None or threads * world <= cores:
        return None
    each = f" in each of {world} processes" if world > 1 else ""
    return (f"train.threads = {threads}{each} is more than the {cores} CPU core(s) this process may run on: the "
            f"threads cannot all run at once and take turns on the cores; at most {max(cores // world, 1)} keeps one "
            "on each")


def _position(last: Path) -> str:
    """Where the training state in ``last`` stands (see ``place_in_run``)."""
    stored = read_checkpoint(last)
    steps = stored.get("steps_per_epoch")  # not in checkpoints from before it was stored
    return place_in_run(int(stored["epoch"]), int(stored.get("batch", 0)), int(steps) if steps else None)


def _how_to_go_on(run_dir: Path) -> str:
    """After a write failed during training: resume where last.ckpt is, else start again (epoch 1's files are
    written before its last.ckpt, and a folder with them but no last.ckpt can be neither resumed nor reused)."""
    if (run_dir / "last.ckpt").is_file():
        return ("the checkpoints written before are intact: once the folder can be written again (room on the disk, "
                f"write access), continue with `{resume_command(run_dir, _processes_here())}`")
    return ("no epoch had been saved to resume from: once the folder can be written again (room on the disk, write "
            f"access), delete {shell_path(run_dir)} and start the run anew")


def _write_report(run_dir: Path, test: Evaluation, data: DataBundle, display: Display, report: bool) -> None:
    """test_predictions.npz (what `mnistlab report` and `compare` read), then report.html if ``report``.

    A test whose outputs were not finite has no predictions to show (each would be class 0): the report
    then has no test section, as an interrupted run's, and an older test's predictions file is removed.
    """
    try:  # the results are saved by now: a report that fails (a plotting error, a full disk) must not lose the run
        if not test.finite:
            (run_dir / PREDICTIONS_FILE).unlink(missing_ok=True)
            if report:
                from ..report import write_report

                display.log(f"report: {write_report(run_dir).path}")
        elif report:
            from ..report import write_run_report

            display.log(f"report: {write_run_report(run_dir, test, data.test.images, data.classes).path}")
        else:
            from ..report import save_test_predictions

            save_test_predictions(run_dir, test, data.test.images, data.classes)
        if not report and (run_dir / "report.html").is_file():  # written by the part of the run before a resume
            display.log(f"report.html is not brought up to date (train.report = false); `mnistlab report "
                        f"{shell_path(run_dir)}` does it")
    except Exception as e:  # noqa: BLE001
        _warn(f"could not write the report ({type(e).__name__}: {e}); the run is complete; retry with "
              f"`mnistlab report {shell_path(run_dir)}`")  # pasted into a shell: one word


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s dropout and augmentation: its own stream, within the 32 bits torch's CPU
    generator keeps (seeds up to 2**32 - 1 are valid; a sum past 2**64 overflowed torch.manual_seed, and one past
    2**32 would be another rank's seed in all but name).

    >>> rank_seed(7, 0), rank_seed(2**32 - 1, 1)
    (7, 1000002)
    """
    return (seed + 1_000_003 * rank) % SEED_LIMIT


def _absolute_paths(cfg: Config) -> Config:
    """``data.dir`` and ``finetune.init_from`` as absolute paths, so that the run's config.toml names the
    folder and checkpoint meant.

    Stored as given, a relative one ("../data") would mean another folder to ``evaluate``,
    ``ensemble`` or ``--resume`` run from elsewhere, which would then download the data there; a config.toml
    rerun from another folder started from another run's weights, or from none. Unset, ``data.dir`` is
    ``$MNISTLAB_DATA``'s folder where that is set: a shell without the variable looked in the cache
    folder instead (only the cache default is left unset, as it is each user's own).
    """
    given = cfg.data.dir or os.environ.get("MNISTLAB_DATA")
    if given:
        cfg = replace(cfg, data=replace(cfg.data, dir=_absolute(given)))
    if cfg.finetune.init_from is not None:
        cfg = replace(cfg, finetune=replace(cfg.finetune, init_from=_absolute(cfg.finetune.init_from)))
    return cfg


def _absolute(path: str) -> str:
    return path if path.startswith("~") or os.path.isabs(path) else os.path.abspath(path)


def _train(cfg: Config, out, resume, callbacks: Iterable[Callback], quiet: bool, report: bool,
           wall0: float) -> RunResult:
    if not distributed.is_main():  # rank 0 has read the checkpoints; the folder may not even exist on this machine
        payload, init = distributed.broadcast_object(None)
        return _run(cfg, None, payload, init, callbacks, Display(quiet=True), False, wall0)
    payload, init, made = None, None, []
    if resume is None and cfg.finetune.init_from is not None:  # a resumed run has its weights in last.ckpt
        init = read_init_checkpoint(cfg.finetune.init_from)  # read before a folder is made: a bad one changes nothing
    if resume is not None:
        resume = Path(resume)
        ckpt = resume_file(resume)
        run_dir = ckpt.parent
        # A resumed run writes into its own folder: train(cfg, out=new, resume=old) went on in old, and new, the
        # folder the caller then read, never existed (the CLI refuses --out with --resume).
        if out is not None and expand_home(Path(out), "the run folder", RunDirError).resolve() != run_dir.resolve():
            raise RunDirError(f"train(): out={str(out)!r} cannot be combined with resume={str(resume)!r}: a resumed "
                              f"run continues in its own folder ({run_dir}); leave out `out`, or pass the same folder")
        payload = read_checkpoint(ckpt)
        _check_kept_models(run_dir, cfg.ema.enabled)
    elif out is not None:
        run_dir = expand_home(Path(out), "the run folder", RunDirError)  # --out=~/runs/a made a folder named ~
        made = missing_folders(run_dir)
    else:
        made = missing_folders(Path("runs"))  # default_run_dir's root: a first run makes it
        run_dir = default_run_dir(cfg.model.name)
        made.insert(0, run_dir)
    try:
        prepare_run_dir(run_dir, resume=payload is not None)
        with RunLock(run_dir):
            payload, init = distributed.broadcast_object((payload, init))
            return _run(cfg, run_dir, payload, init, callbacks, Display(quiet=quiet, progress=cfg.train.progress),
                        report, wall0)
    except BaseException as e:
        # A signal outside the trainer's steps (loading, the test), or a second Ctrl-C inside them: the CLI says
        # how to go on from the last complete last.ckpt (a trained run's resume only tests and writes summary.json).
        if isinstance(e, KeyboardInterrupt) and (run_dir / "last.ckpt").is_file():
            e.resume_with = resume_command(run_dir, _processes_here())
        remove_empty(made)  # a run that failed before writing anything leaves no empty folder behind (nor runs/)
        raise


def config_model(cfg: Config, data: DataBundle) -> torch.nn.Module:
    """The model ``cfg`` names, freshly initialized (from the global RNG) and sized for ``data``:
    its classes, channels, image size and normalization, and named by them as a loaded one is."""
    model = build_model(cfg.model.name, num_classes=data.num_classes, in_channels=data.in_channels,
                        image_size=data.image_size, mean=data.mean, std=data.std, **cfg.model.options())
    # as model_from_checkpoint sets them: train()'s fit.model predicted a Fashion-MNIST image with MNIST's
    # preprocessing and the class names "0".."9" (predict_files), and was exported without them
    model.classes, model.dataset = list(data.classes), data.dataset
    return model


def load_init(model: torch.nn.Module, cfg: Config, data: DataBundle, init: tuple[Path, dict[str, Any]]) -> str:
    """Load ``finetune.init_from``'s checkpoint (``init``, from :func:`read_init_checkpoint`) into ``model``;
    returns the line saying what was taken and what was replaced."""
    check_frozen_head(model, init[1], data.num_classes, cfg.finetune.freeze, cfg.finetune.unfreeze_at)
    return init_from_checkpoint(model, init[1], model_name=cfg.model.name, num_classes=data.num_classes,
                                in_channels=data.in_channels, image_size=data.image_size, source=str(init[0]),
                                model_options=config_to_dict(cfg)["model"])


def _check_kept_models(run_dir: Path, ema: bool) -> None:
    """Read a resumed run's best.ckpt and ema.ckpt (with ``ema``: else it is not tested) now: the final test
    loads them after training, where a damaged one would fail the run only once the new epochs were trained
    and their files written."""
    if_none = {"best.ckpt": "the final test uses the final weights", "ema.ckpt": "no EMA test is reported"}
    if not ema:
        del if_none["ema.ckpt"]
    for name, otherwise in if_none.items():
        kept = run_dir / name
        if kept.exists() or kept.is_symlink():
            try:
                read_checkpoint(kept)
            except CheckpointError as e:
                raise CheckpointError(
                    f"{e}; the resumed run would test it at its end: put back an intact copy, or delete it (a "
                    f"later epoch that beats the best so far writes it again; if none does, {otherwise})"
                ) from None


def _extra_tests(cfg: Config, run_dir: Path, model: torch.nn.Module, tested: str, data, device,
                 display: Display) -> dict[str, Any]:
    """Test accuracies of the weight average (ema.ckpt) and with test-time augmentation, each reported apart
    (``model``: the tested model, ``tested`` its name: best.ckpt, or the final weights).

    Like best.ckpt, ema.ckpt was chosen on the validation split; the test split is only read here.
    """
    out: dict[str, Any] = {}
    models = {"": model}
    ema_path = run_dir / "ema.ckpt"
    if cfg.ema.enabled and ema_path.exists():
        ema = read_checkpoint(ema_path)
        models["ema_"] = model_from_checkpoint(ema).to(device)
        out["ema_best_epoch"] = int(ema["epoch"])
    for prefix, m in models.items():
        name = "ema.ckpt" if prefix else tested
        if prefix:
            ev = evaluate(m, data.test, cfg.train.eval_batch_size, data.num_classes,
                          progress=display.evaluation_progress(f"testing {name}"))
            out[f"{prefix}test_accuracy"] = ev.accuracy
        if cfg.tta.enabled:
            ev = evaluate(m, data.test, cfg.train.eval_batch_size, data.num_classes, tta_shift=cfg.tta.shift,
                          progress=display.evaluation_progress(f"testing {name} with test-time augmentation"))
            out[f"{prefix}tta_test_accuracy"] = ev.accuracy
    return out


_EXTRA_NAMES = {
    "ema_test_accuracy": "weight average (ema.ckpt)",
    "tta_test_accuracy": "with test-time augmentation",
    "ema_tta_test_accuracy": "weight average with test-time augmentation",
}


def _run(
    cfg: Config,
    run_dir: Path | None,  # None: a rank other than 0, which writes nothing
    payload: dict[str, Any] | None,
    init: tuple[Path, dict[str, Any]] | None,
    callbacks: Iterable[Callback],
    display: Display,
    report: bool,  # write report.html
    wall0: float,
) -> RunResult:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = distributed.local_device(resolve_device(cfg.train.device))
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    stored = None  # the config the resumed run was trained under
    if payload is not None:  # before the data: another dataset would be loaded, or downloaded, and then refused
        stored = check_resume(payload, cfg)
    data = load_data(cfg.data, device=device)
    model = config_model(cfg, data)
    if distributed.rank() > 0:  # dropout and augmentation draw other numbers on each rank; rank 0 keeps a 1-process run's
        torch.manual_seed(rank_seed(cfg.train.seed, distributed.rank()))
    init_note = None if init is None else load_init(model, cfg, data, init)
    if run_dir is not None:
        check_free_space(run_dir, model, cfg)
    cbs = build_callbacks(cfg, run_dir) + list(callbacks)  # without a folder: only those that steer the training
    trainer = Trainer(model, data, cfg, callbacks=cbs, run_dir=run_dir, display=display, device=device)
    if payload is not None:
        trainer.restore(payload)  # before anything is written: a checkpoint that does not fit changes nothing
        batch = int(payload.get("batch", 0))  # a place inside an epoch (Ctrl-C, last_every_n_steps)
        where = place_in_run(trainer.epoch, batch, trainer.steps_per_epoch)
        display.log(f"resuming {run_dir} {where} (step {trainer.step})")
        if run_dir is not None and stored.ema.enabled and not cfg.ema.enabled and (run_dir / "ema.ckpt").exists():
            _warn("ema.enabled was true, now false: ema.ckpt is kept as it was (the weight average up to now), "
                  "no longer updated or tested; `mnistlab ensemble --ema` refuses this run folder (name its "
                  "ema.ckpt to use it anyway)")
        stored_precision = (payload["config"].get("train") or {}).get("precision", "auto")
        if stored_precision != cfg.train.precision:  # allowed (a run moved to a GPU, say), but said
            display.log(f"train.precision was {stored_precision}, now {cfg.train.precision}: the rest of the run "
                        f"trains in {trainer.precision} (summary.json's precision is the last part's)")
        if trainer.stop_reason is not None:
            display.log(
                f"the run had stopped ({trainer.stop_reason}): nothing is left to train; to train on, "
                f"resume with new settings (e.g. {'--max-steps' if trainer.stopped_by == 'max_steps' else '--epochs'}, "
                "--set early_stopping.patience=...)"
            )
        elif trainer.epoch >= cfg.train.epochs and not batch:  # its last epoch ended, or its test was interrupted
            display.log(f"the run has trained its {cfg.train.epochs} epoch{'s' * (cfg.train.epochs != 1)}: nothing is "
                        f"left to train, it is tested; to train on, resume with --epochs {trainer.epoch + 1} or more")
    trainer.compile_ahead()  # with train.compile; on every rank, before anything is written
    trainer.callbacks.state_dict()  # a state checkpoints cannot hold fails now, not after epoch 1's files
    if run_dir is None:  # not rank 0: train in step with the others; rank 0 tests, reports and writes
        return RunResult(run_dir=None, fit=trainer.fit(), test=None, summary={})
    write_file(run_dir / "config.toml", config_to_toml(cfg).encode())
    params = count_parameters(model)
    if init_note is not None:
        display.log(init_note)
    display.log(
        f"training {cfg.model.name} ({trainable_line(model)}) on {data.dataset}: "
        f"{len(data.train):,} train / {len(data.val):,} validation images, {device}, "
        + (f"{trainer.precision} autocast, " if trainer.precision in ("bf16", "fp16") else "")
        + f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() != 1)}"
        + (f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else "")
        + f" -> {run_dir}"
    )
    unfreeze_at = cfg.finetune.unfreeze_at
    if unfreeze_at is not None and unfreeze_at > cfg.train.epochs:  # not an error: a run may stop short and resume
        _warn(f"finetune.unfreeze_at = {unfreeze_at} is after the last epoch (train.epochs = {cfg.train.epochs}): "
              f"the frozen parameters do not train in this run; resume with --epochs {unfreeze_at} or more to reach it")
    if stored is not None and cfg.schedule.name in ("onecycle", "cosine"):
        # Both schedules are planned over the run's steps (train.epochs, cut to train.max_steps): a new total
        # moves the whole curve under the steps already taken (a finished one-cycle run climbs back from its
        # final rate to mid-cycle).
        old_plan = trainer.plan(stored.train)  # (both schedules refuse a resume that changes the epoch's steps)
        changed = [f"train.{key} was {getattr(stored.train, key)}, now {getattr(cfg.train, key)}"
                   for key in ("epochs", "max_steps") if getattr(stored.train, key) != getattr(cfg.train, key)]
        if old_plan != trainer.total_steps and changed:
            _warn(f"{'; '.join(changed)}: the {cfg.schedule.name} schedule is planned over all the run's steps (now "
                  f"{trainer.total_steps}), so the learning rate now follows the new plan from step {trainer.step} "
                  "on (it may rise again); for more epochs at a low rate, resume with --set schedule.name=constant "
                  "--lr RATE")
    epoch_steps = trainer.plan(replace(cfg.train, max_steps=None))  # fewer than epochs x steps after a cut epoch
    if cfg.train.max_steps is not None and cfg.train.max_steps > epoch_steps:
        _warn(f"train.max_steps = {cfg.train.max_steps} is more than the {epoch_steps} "
              f"steps of train.epochs = {cfg.train.epochs}: the run ends after its epochs")
    extra = [emulated_precision(trainer.precision, device), thread_warning(cfg.train.threads, device),
             kept_warning(cfg.train.reuse_memory) if device.type == "cpu" else None,
             *max_steps_warnings(cfg.schedule, cfg.train.epochs, cfg.train.max_steps, trainer.steps_per_epoch)]
    for warning in [*settings_warnings(cfg), *filter(None, extra)]:
        _warn(warning)
    summary: dict[str, Any] = {
        "model": cfg.model.name,
        "dataset": data.dataset,
        "parameters": params,
        "trainable_parameters": count_parameters(model, trainable_only=True),  # when this run (or its resumed part) began
        "device": str(device),
        "processes": distributed.world_size(),  # > 1: trained with DistributedDataParallel (per-process device)
        "threads": torch.get_num_threads(),
        "precision": trainer.precision,  # train.precision as resolved (auto: bf16 where the GPU or CPU computes in it)
        "torch": torch.__version__,
        "cpu": cpu_name(),  # train_seconds compare only between runs on the same kind of CPU
        "train_images": len(data.train),
        "val_images": len(data.val),
    }
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
    try:
        result = trainer.fit()
    except TrainingInterrupted as e:
        resume_with = resume_command(run_dir, _processes_here())
        summary.update(
            stop_reason=trainer.stop_reason,
            stopped_by="interrupted",
            epochs=trainer.epoch,
            train_seconds=trainer.train_seconds,
            **_compile_entry(cfg, trainer.compile_seconds),
            **_fp16_entry(trainer),
            resume_with=resume_with,
        )
        write_json(run_dir / "summary.json", summary)
        # A resumed run's test predictions are of the test it had before: report would show them as this one's.
        (run_dir / PREDICTIONS_FILE).unlink(missing_ok=True)
        # Printed by `mnistlab train`, not here: a sweep that runs this as a trial has other advice.
        e.run_dir = run_dir
        e.advice = f"{trainer.stop_reason}; progress saved to {e.checkpoint}\nresume with: {resume_with}"
        e.args = (e.advice,)
        raise
    except CheckpointWriteError as e:
        raise CheckpointWriteError(f"{e}; {_how_to_go_on(run_dir)}") from None
    except OSError as e:  # metrics.csv or another file of the run could not be written (disk full, folder gone)
        raise RunDirError(
            f"cannot write to run folder {run_dir}: {e.strerror or e}"
            + (f" ({e.filename})" if e.filename else "")
            + f"; {_how_to_go_on(run_dir)}"
        ) from None
    # As fit() gives it back: the last validation put the model back in train mode, and a notebook that used
    # result.fit.model drew dropout and batch statistics in its predictions.
    result.model.eval()

    best_path = run_dir / "best.ckpt"
    if best_path.exists():
        best = read_checkpoint(best_path)
        test_model = model_from_checkpoint(best).to(device)
        evaluated, best_epoch = "best.ckpt", int(best["epoch"])
    else:  # no validated epoch was ever better than nothing (e.g. non-finite loss in epoch 1)
        test_model, evaluated, best_epoch = result.model, "final weights", result.epochs
    test = evaluate(test_model, data.test, cfg.train.eval_batch_size, data.num_classes,
                    label_smoothing=cfg.train.label_smoothing,
                    progress=display.evaluation_progress(f"testing {evaluated}"))
    best_row = next((h for h in result.history if h["epoch"] == best_epoch), None)
    partial_test = data.test_partial  # data.test_limit cut the test set short (not: a limit of its size or above)
    summary.update(
        test_accuracy=test.accuracy,
        test_loss=test.loss,
        test_images=len(data.test),
        # set only for a quick check on part of the test set: its accuracy is not comparable with a whole test's
        **({"test_limit": cfg.data.test_limit} if partial_test else {}),
        evaluated=evaluated,
        # The checkpoint to use for predictions; None when no epoch ended with finite validation metrics.
        use_checkpoint="best.ckpt" if best_path.exists() else None,
        restored_by_early_stopping=trainer.restored_epoch is not None,  # best.ckpt is then the stopping rule's best
        best_epoch=best_epoch,
        best_val_accuracy=best_row["val_accuracy"] if best_row else None,
        epochs=result.epochs,
        steps=result.steps,
        train_seconds=result.train_seconds,
        **_compile_entry(cfg, result.compile_seconds),
        wall_seconds=time.perf_counter() - wall0,
        stop_reason=result.stop_reason,
        stopped_by=result.stopped_by,
        **_fp16_entry(trainer),
        per_class_accuracy=dict(zip(data.classes, test.per_class_accuracy)),
    )
    extras = _extra_tests(cfg, run_dir, test_model, evaluated, data, device, display)
    summary.update(extras)
    write_json(run_dir / "summary.json", summary)
    _write_report(run_dir, test, data, display, report)  # without the test's figures if its outputs were not finite
    display.log(f"stopped: {result.stop_reason}")
    if result.stopped_by == "non_finite_loss":  # a failed run, even though it ends normally: say it on stderr too
        kept = [f"last.ckpt holds the state {_position(run_dir / 'last.ckpt')}"] if (run_dir / "last.ckpt").exists() else []
        kept += [f"use best.ckpt (epoch {best_epoch})"] if best_path.exists() else []
        _warn(f"training diverged: {result.stop_reason}; "
              f"{'; '.join(kept) or 'no epoch finished, so no checkpoint was written'}; "
              "try a lower learning rate (optimizer.lr)")
    # "epoch 0" read as an epoch: a run that diverged in its first epoch tested the weights as it stopped
    tested = (f"{evaluated} from epoch {best_epoch}" if best_epoch
              else f"{evaluated} after step {result.steps} (no epoch finished)")
    if not test.finite:
        display.log(f"no test accuracy: the outputs of {tested} are not finite")
    display.log(
        (f"test accuracy {100 * test.accuracy:.2f}% (loss {test.loss:.4f})" if test.finite else "tested")
        + (f" on the first {len(data.test):,} test images (data.test_limit)" if partial_test else "")
        + f" with {tested}"
        f"{' (restored by early stopping)' if trainer.restored_epoch is not None else ''}; "
        f"{result.train_seconds:.1f} s of training"
        f"{f' (and {result.compile_seconds:.1f} s compiling)' if result.compile_seconds else ''}; "
        f"run folder: {shlex.quote(str(run_dir))}"  # quoted as the resume command is: pasted into a shell
    )
    if any(k in extras for k in _EXTRA_NAMES):
        display.log("test accuracy " + "; ".join(f"{_EXTRA_NAMES[k]} {100 * v:.2f}%" for k, v in extras.items() if k in _EXTRA_NAMES))
    # The HParams dashboard's final/* numbers, the tested model's too, as summary.json has them. Last: a folder
    # that can no longer be written fails this with advice, after the report and the results are out.
    for cb in cbs:
        if isinstance(cb, TensorBoard):
            cb.add_run_summary(summary)
    return RunResult(run_dir=run_dir, fit=result, test=test, summary=summary)
