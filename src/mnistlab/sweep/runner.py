"""Run a sweep: an Optuna study whose trials are ordinary ``train`` runs.

Every process of a sweep (the one the user started and its ``--workers``)
runs the same loop against one shared storage::

    under the study lock: count finished + running trials; stop at sweep.trials; else ask for a trial
                          and draw its values (in a finite space, values no other trial holds)
    train the trial into <out>/trial-NNNN/, reporting the objective each epoch (the pruner may stop it)
    tell the study: COMPLETE with the best validation value, PRUNED, or FAIL

Counting and asking under one lock is what makes the total exact with several
workers; for SQLite (the default) the lock is a file beside the database. A
server database (PostgreSQL, MySQL) spans machines without a shared file, so
there a sweep may overshoot its count by up to the number of workers minus one,
and two workers may draw the same values of a finite space (see untried.py).

Ctrl-C: the running trial saves its state and is marked failed; finished trials
stay in the storage, and running the same command again continues the study.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import machine
from ..callbacks.base import Callback, TrainerHandle
from ..errors import ConfigError, MnistlabError
from ..folders import missing_folders, probe_write, remove_empty
from ..report.runfolder import is_run_folder
from .spec import (SEED_LIMIT, SweepSpec, apply_params, describe_changes, fingerprint, fingerprint_changes,
                   grid_points, is_sqlite, point_key, space_size, too_many_trials)

INSTALL_HINT = "pip install 'mnistlab[tune]'"
MAX_FAILURES_IN_A_ROW = 3  # a config that cannot train (a bad combination of values) should not loop forever
NO_SOURCE = "sweep workers start from the sweep file: run the sweep from a file to use workers > 1"
SQLITE_TIMEOUT_S = 120  # workers wait this long for SQLite's write lock instead of failing with "database is locked"


def require_optuna():
    """Optuna is an optional extra: import it, or say how to install it."""
    try:
        import optuna
    except ImportError:
        raise MnistlabError(f"`mnistlab sweep` needs Optuna, which is not installed: {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial says what matters
    return optuna


class SweepInterrupted(Exception):
    """Ctrl-C (or SIGTERM) during a sweep; finished trials are in the storage."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class SweepResult:
    out: Path
    storage: str
    study_name: str
    rows: list  # results.TrialRow, best first
    files: dict[str, Path]


def default_out(name: str, root: str | Path = "sweeps") -> Path:
    """``sweeps/<date>-<time>-<name>``; not created here (the sweep creates it when it starts).

    The study's name is any text Optuna takes; in the folder's name a path separator is a ``-`` (study_name
    "lr/wd" made sweeps/<stamp>-lr/wd/, a folder in a folder) and it is cut to 100 bytes (a folder's name
    holds at most 255).

    >>> default_out("lr/wd").name[-6:], len(default_out("x" * 300).name)
    ('-lr-wd', 116)
    """
    part = name.replace("/", "-").replace(os.sep, "-").replace("\0", "-")
    part = part.encode()[:100].decode(errors="ignore")  # bytes: a file name holds 255 of them
    return Path(root) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{part}"


def storage_url(spec: SweepSpec, out: Path) -> str:
    """``[sweep] storage``, or the URL of ``out``/study.db: the one of two spellings that the installed SQLAlchemy
    reads back as that file, or a MnistlabError where neither does.

    Quoted for SQLAlchemy 2.1, which reads "?" in a URL as the start of its options and decodes "%41": an unquoted
    "sweeps/q?x" put the database at "sweeps/q", outside the sweep folder and its lock. SQLAlchemy 2.0 and 1.4
    (Optuna takes them too; pip installed 2.0 on Python 3.10 here) decode nothing, so there the quoted URL of
    "my sweeps" named a folder "my%20sweeps" that did not exist, and every sweep in a folder with a space failed.
    """
    if spec.storage:
        return spec.storage
    from sqlalchemy.engine import make_url  # optuna's dependency: there whenever a sweep runs

    path = str(out.resolve() / "study.db")
    for url in (f"sqlite:///{urllib.parse.quote(path, safe='/')}", f"sqlite:///{path}"):
        if make_url(url).database == path:
            return url
    raise MnistlabError(f"the sweep folder {out} has characters (such as ? or %) that this SQLAlchemy cannot take "
                        "in a SQLite path; choose a folder without them with --out")


def _sqlite_path(url: str) -> str:
    """The database file of a ``sqlite:///`` URL, as SQLAlchemy reads it; "" for other databases and
    in-memory SQLite.

    >>> _sqlite_path("sqlite:////tmp/sweep/study.db"), _sqlite_path("postgresql://h/db")
    ('/tmp/sweep/study.db', '')
    >>> _sqlite_path("sqlite+pysqlite:////tmp/study.db")  # a driver named: SQLite all the same, and as shared
    '/tmp/study.db'
    """
    if not is_sqlite(url) or "///" not in url:
        return ""
    from sqlalchemy.engine import make_url  # optuna's dependency: there whenever a sweep runs

    path = make_url(url).database or ""
    return "" if path == ":memory:" else path


def check_writable(folder: Path, what: str) -> None:
    """A MnistlabError unless a file can be made in ``folder``: said before anything waits on a lock there
    (a lock file that cannot be made looks held to filelock, which then waits its whole timeout)."""
    try:
        probe_write(folder)
    except OSError as e:
        raise MnistlabError(f"cannot write {what} {folder}: {e.strerror or e}") from None


def study_lock(url: str):
    """A lock shared by every process of a SQLite study; a no-op for server databases (see the module docstring)."""
    path = _sqlite_path(url)
    if not path:
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(f"{path}.lock", timeout=SQLITE_TIMEOUT_S)


def open_study(spec: SweepSpec, url: str, *, worker: int = 0):
    """Create the study, or load it to continue; refuse one that was started by a different sweep."""
    optuna = require_optuna()
    kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if is_sqlite(url) else {}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # noqa: BLE001 -- SQLAlchemy raises many types for a bad URL or an unreachable server
        raise ConfigError(f"cannot open the sweep storage {url}: {type(e).__name__}: {e}") from None
    study = optuna.create_study(
        storage=storage, study_name=spec.study_name, direction=spec.direction, load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=spec.seed), pruner=make_pruner(spec),
    )
    mine, stored = fingerprint(spec), study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", mine)
    elif changed := fingerprint_changes(mine, stored):
        raise ConfigError(
            f"the study {spec.study_name!r} in {url} was started by a different sweep (it differs in: "
            f"{', '.join(changed)}): {describe_changes(mine, stored)}; trials of different searches are not mixed: "
            "choose another --out or sweep.study_name, or restore the sweep file"
        )
    # Each process, and each rerun, draws its own stream: the same seed in two workers (or after
    # Ctrl-C) would otherwise propose the very trials already run. One uninterrupted process
    # with a given seed proposes the same trials every time. Wrapped into the samplers' 32-bit range: a
    # seed near 2**32 - 1 would otherwise be refused by NumPy in the second worker or on the first rerun.
    seed = (spec.seed + 7919 * worker + len(study.get_trials(deepcopy=False))) % SEED_LIMIT
    study.sampler = make_sampler(spec, seed=seed, taken=lambda: taken_params(study, optuna))
    return study


def make_sampler(spec: SweepSpec, seed: int, taken: Callable[[], list[dict[str, Any]]]):
    """The sampler of spec.sampler; in a finite space, one that proposes only values ``taken()`` does not hold."""
    optuna = require_optuna()
    inner = (optuna.samplers.TPESampler if spec.sampler == "tpe" else optuna.samplers.RandomSampler)(seed=seed)
    # grid: every trial's values are fixed by enqueue_trial (see _next_grid_point); the sampler is never asked.
    # An endless space (a float range without a step) holds no two trials with the same values to avoid.
    if spec.sampler == "grid" or space_size(spec.params) is None:
        return inner
    from .untried import Untried

    return Untried(inner, spec, seed, taken)


def make_pruner(spec: SweepSpec):
    optuna = require_optuna()
    if spec.pruner == "median":
        # Sweeps here hold tens of trials, not thousands: two finished trials are enough to compare against.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=most_epochs(spec))
    # none, and early_stopping (our own rule stops the trial; see run_trial)
    return optuna.pruners.NopPruner()


def most_epochs(spec: SweepSpec) -> int:
    """The most epochs a trial can train: the largest value of a swept ``train.epochs``, else the base config's.

    Hyperband plans its brackets from it (floor(log3(max / 1)) + 1 of them): with the base's count instead, a
    sweep of epochs 2..20 on a base of 2 got one bracket, the most aggressive (prune from epoch 1), not three.
    """
    swept = [p for p in spec.params if p.key == "train.epochs"]
    if not swept:
        return spec.base.train.epochs
    param = swept[0]
    return int(max(param.choices) if param.type == "categorical" else param.high)


class ReportToTrial(Callback):
    """Reports the objective to the Optuna trial after each epoch, and stops the run when the pruner says so.

    It stops through the trainer handle like any callback, so the pruned trial still ends as a
    complete run folder (best.ckpt, summary.json); ``run_trial`` then marks the trial pruned.
    """

    def __init__(self, trial, objective: str) -> None:
        self.trial = trial
        self.objective = objective
        self.pruned_at: int | None = None
        self.values: list[float] = []  # the objective after each epoch
        self.trained = False  # training has ended (the test and report may still be to come)
        self.ended_early = False  # the last epoch trained was before the run's planned last one
        self.stopped_by: str | None = None  # the run's summary.json stopped_by, once training has ended

    def on_train_end(self, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        self.trained = True
        self.stopped_by = trainer.stopped_by

    def stopped_by_rule(self) -> bool:
        """The config's early-stopping rule ended the run before its last planned epoch: what the
        ``early_stopping`` pruner prunes. A stop at the last epoch cut nothing short, so the trial is complete."""
        return self.ended_early and self.stopped_by == "early_stopping"

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        value = float(metrics[self.objective])
        self.values.append(value)
        self.ended_early = epoch < trainer.planned_epochs
        self.trial.report(value, epoch)
        # After the run's last epoch (train.epochs, or max_steps reached) the trial is complete, not pruned:
        # pruned, it could not become the best. So it is when a callback before this one has stopped the run
        # (the time limit): summary.json gives that reason, and the trial was marked pruned besides.
        if (self.pruned_at is None and epoch < trainer.planned_epochs and trainer.stop_reason is None
                and self.trial.should_prune()):
            self.pruned_at = epoch
            trainer.request_stop(f"pruned by the sweep at epoch {epoch} ({self.objective} {value:.4g})")


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    """One value per param from the trial (Optuna labels; see Param.labels)."""
    values: dict[str, Any] = {}
    for p in spec.params:
        if p.type == "float":
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
        elif p.type == "int":
            values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[p.key] = trial.suggest_categorical(p.key, p.labels())
    return values


def best_value(values: list[float], direction: str) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if direction == "maximize" else min(finite)


def run_trial(spec: SweepSpec, trial, labels: dict[str, Any], out: Path) -> tuple[float | None, bool]:
    """Train one trial (its values: ``labels``, from :func:`suggest`) into ``out/trial-NNNN``; returns
    (objective, pruned). The objective is the best value over the epochs on the validation split, the epoch
    best.ckpt would be chosen by."""
    from ..training.run import train

    cfg = apply_params(spec, labels)
    run_dir = out / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", run_dir.name)
    reporter = ReportToTrial(trial, spec.objective)
    t0 = time.perf_counter()
    try:
        result = train(cfg, out=run_dir, callbacks=[reporter], quiet=True)
    except KeyboardInterrupt as e:
        # Ctrl-C (or SIGTERM, raised as one by the CLI) after training, during the test or report (outside the
        # trainer's signal guard): the trial's epochs are all there, and its best value with them; it is kept,
        # with what results.csv shows of a trial, and the sweep stops.
        if reporter.trained or _tested(run_dir):
            value = best_value(reporter.values, spec.direction)
            _record(trial, value, len(reporter.values), t0, "interrupted after training")
            pruned = reporter.pruned_at is not None or (spec.pruner == "early_stopping" and reporter.stopped_by_rule())
            raise TrialFinished(value, pruned, getattr(e, "signum", signal.SIGINT)) from None
        raise
    history = result.fit.history if result.fit is not None else []
    value = best_value([float(h[spec.objective]) for h in history], spec.direction)
    _record(trial, value, len(history), t0, result.summary.get("stop_reason"))
    return value, reporter.pruned_at is not None or (spec.pruner == "early_stopping" and reporter.stopped_by_rule())


def _record(trial, value: float | None, epochs: int, t0: float, stop_reason: str | None) -> None:
    """What results.csv and best.toml read of a trial (results.collect)."""
    trial.set_user_attr("epochs", epochs)
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
    trial.set_user_attr("stop_reason", stop_reason)
    if value is not None:
        trial.set_user_attr("objective", value)


def _tested(run_dir: Path) -> bool:
    """Whether the run's summary.json holds its test result (written after training and the test)."""
    try:
        return "test_accuracy" in json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False


class TrialFinished(KeyboardInterrupt):
    """Ctrl-C came after the trial had trained all its epochs: it is recorded with its value, then the sweep stops."""

    def __init__(self, value: float | None, pruned: bool, signum: int = signal.SIGINT) -> None:
        super().__init__()
        self.value, self.pruned, self.signum = value, pruned, signum


def _fail_dead_trials(study, optuna) -> None:
    """A trial left RUNNING by a process of this machine that no longer exists (kill -9) is marked failed,
    so that it neither counts towards the total nor blocks its grid point."""
    from ..training.run import process_alive

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and isinstance(pid, int) and not process_alive(pid):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def taken_params(study, optuna) -> list[dict[str, Any]]:
    """The values (Optuna labels) a new trial must not repeat: those of finished, running and queued trials."""
    S = optuna.trial.TrialState
    taken = [t.params for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING))]
    taken += [t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False, states=(S.WAITING,))]
    # A point whose config is invalid would fail again (running out of memory too: the model or batch its values
    # make is too large); an interrupted one (no error), or one whose files could not be written (see _passing),
    # is run anew.
    taken += [t.params for t in study.get_trials(deepcopy=False, states=(S.FAIL,))
              if "error" in t.user_attrs and not t.user_attrs.get("passing")]
    return taken


def _passing(error: BaseException) -> bool:
    """Whether a trial's error says nothing of its values: a file of its run could not be written (a full disk, a
    folder made read-only). Counted as tried, the point was never run again, also after the disk was cleared and
    the sweep rerun."""
    from ..errors import RunDirError
    from ..training.checkpoint import CheckpointWriteError

    return isinstance(error, (OSError, RunDirError, CheckpointWriteError))


def _next_grid_point(spec: SweepSpec, study, optuna) -> dict[str, Any] | None:
    taken = taken_params(study, optuna)
    return next((p for p in grid_points(spec) if p not in taken), None)


def _all_tried(spec: SweepSpec, study, optuna) -> bool:
    """Every point of a finite space is taken (some failed with an error: fewer trials count than points)."""
    size = space_size(spec.params)
    return size is not None and len({point_key(spec, p) for p in taken_params(study, optuna)} - {None}) >= size


def counted(study, optuna) -> int:
    """Trials that count towards sweep.trials: finished (complete or pruned) and running ones."""
    S = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING)))


def work(spec: SweepSpec, study, out: Path, lock, echo: Callable[[str], None]) -> int:
    """The loop of one process (see the module docstring); returns the number of trials it ran."""
    from ..training.run import warnings_as

    optuna = require_optuna()
    with warnings_as("sweep"):  # each trial's train() would repeat them, as `mnistlab train`'s
        return _work(spec, study, out, lock, echo, optuna)


def _work(spec: SweepSpec, study, out: Path, lock, echo: Callable[[str], None], optuna) -> int:
    from ..training.fit import TrainingInterrupted
    from .results import trial_line

    S = optuna.trial.TrialState
    ran, failures = 0, 0
    while True:
        with lock:
            _fail_dead_trials(study, optuna)
            if counted(study, optuna) >= spec.trials:
                return ran
            if spec.sampler == "grid":
                # A point left queued (Ctrl-C between enqueue and ask) is the one ask() takes next: enqueueing
                # another behind it would leave the last point queued, and counted as taken, for ever.
                if not study.get_trials(deepcopy=False, states=(S.WAITING,)):
                    point = _next_grid_point(spec, study, optuna)
                    if point is None:
                        return ran
                    study.enqueue_trial(point)
            elif _all_tried(spec, study, optuna):
                return ran
            trial = study.ask()
            try:
                trial.set_user_attr("host", socket.gethostname())
                trial.set_user_attr("pid", os.getpid())
                # Drawn before the lock is let go: the next worker's sampler then sees these values taken.
                labels = suggest(trial, spec)
            except BaseException:
                # Ctrl-C before the pid is stored: no rerun could tell this trial's process has gone, and RUNNING
                # for ever it would count towards sweep.trials (and hold its grid point) on every rerun.
                study.tell(trial, state=S.FAIL, skip_if_finished=True)
                raise
        try:
            value, pruned = run_trial(spec, trial, labels, out)
        except TrialFinished as e:
            if e.pruned or e.value is None:
                study.tell(trial, state=S.PRUNED)
            else:
                study.tell(trial, e.value)
            raise SweepInterrupted(f"trial {trial.number} had finished training and is kept; the sweep was "
                                   "interrupted after it", e.signum) from None
        except (TrainingInterrupted, KeyboardInterrupt) as e:
            study.tell(trial, state=S.FAIL, skip_if_finished=True)
            signum = getattr(e, "signum", signal.SIGINT)  # SIGTERM comes as a KeyboardInterrupt with one
            raise SweepInterrupted(f"trial {trial.number} was interrupted and is marked failed", signum) from None
        except Exception as e:  # noqa: BLE001 - a trial must not stay RUNNING; the sweep goes on, or stops below
            message = str(e) if isinstance(e, MnistlabError) else f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", message)
            if _passing(e):  # its values are tried again (taken_params), here or on a rerun
                trial.set_user_attr("passing", True)
            if not (out / f"trial-{trial.number:04d}").exists():  # it failed before its run folder was made
                trial.set_user_attr("run_dir", None)
            study.tell(trial, state=S.FAIL)
            echo(f"trial {trial.number}: failed: {message}")
            failures += 1
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise MnistlabError(f"{failures} trials in a row failed; the last error: {message}") from None
            continue
        ran, failures = ran + 1, 0
        # No epoch with a finite objective (the loss diverged in epoch 1) is a hopeless trial, not a broken
        # one: recorded as pruned, it counts towards the total instead of being drawn again.
        if pruned or value is None:
            study.tell(trial, state=S.PRUNED)
        else:
            study.tell(trial, value)
        echo(trial_line(study.get_trials(deepcopy=False)[trial.number], spec))


def _worker_command(spec: SweepSpec, out: Path, url: str, index: int, quiet: bool) -> list[str]:
    if spec.source is None:
        raise ConfigError(NO_SOURCE)
    cmd = [sys.executable, "-m", "mnistlab", "sweep", str(spec.source), "--out", str(out), "--storage", url,
           "--trials", str(spec.trials), "--workers", str(spec.workers), "--worker", str(index)]
    if spec.data_dir is not None:
        cmd += ["--data-dir", spec.data_dir]
    for o in spec.overrides:
        cmd += ["--set", o]
    return cmd + (["--quiet"] if quiet else [])


def _share_threads(spec: SweepSpec) -> None:
    """Workers on one machine split its cores, unless the config fixes train.threads."""
    if spec.workers > 1 and spec.base.train.threads is None:
        import torch

        torch.set_num_threads(max(1, machine.usable_cores() // spec.workers))


def run_sweep(spec: SweepSpec, *, out: str | Path | None = None, quiet: bool = False,
              worker: int | None = None, command: Sequence[str] | None = None) -> SweepResult | None:
    """Run (or continue) the sweep into ``out``; with ``worker`` set, be one of its extra processes.

    ``command``: the arguments of ``mnistlab`` that started it (``["sweep", FILE, ...]``); after a
    Ctrl-C the message gives them back, with ``--out``, as the command that continues the sweep.

    >>> result = run_sweep(load_sweep("configs/sweep-example.toml"), out="sweeps/demo")   # doctest: +SKIP
    >>> result.rows[0].value                                                               # doctest: +SKIP
    0.9871
    """
    from .results import write_results

    optuna = require_optuna()
    if worker is None and spec.workers > 1 and spec.source is None:  # said before the folder and study.db are made
        raise ConfigError(NO_SOURCE)
    out = Path(out) if out is not None else default_out(spec.study_name)
    if is_run_folder(out):  # its study.db, trial folders and results would be mixed in with the run's files
        raise MnistlabError(f"{out} is a training run's folder (it holds summary.json, metrics.csv or "
                            "config.toml); give the sweep a folder of its own with --out")
    made = missing_folders(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistlabError(f"cannot create the sweep folder {out}: {e.strerror or e}") from None
    url = storage_url(spec, out)
    lock = study_lock(url)
    echo = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    _share_threads(spec)
    try:
        check_writable(out, "to the sweep folder")
        if _sqlite_path(url):
            check_writable(Path(_sqlite_path(url)).parent, "the sweep storage's folder")
        with lock:  # two processes creating the same SQLite tables at once would collide
            if worker is None:
                _check_trial_folders(spec, out, url, optuna)
            study = open_study(spec, url, worker=worker or 0)
    except MnistlabError:  # a folder or storage that cannot be written or opened: the folders made for it go again
        remove_empty(made)
        raise
    if worker is not None:
        work(spec, study, out, lock, echo)
        return None

    _fail_dead_trials(study, optuna)  # a trial of a killed run is not "already run"
    if (note := too_many_trials(spec)) is not None:  # said by this process only, not again by each worker
        print(f"mnistlab sweep: warning: {note}", file=sys.stderr)
    done = counted(study, optuna)
    if done:
        echo(f"continuing study {spec.study_name!r} in {url}: {done} of {spec.trials} trials already run")
    echo(f"sweep {spec.study_name!r}: {spec.trials} trials, {spec.sampler} sampler, pruner {spec.pruner}, "
         f"objective {spec.objective} ({spec.direction}), {spec.workers} worker(s) -> {out}")
    # Workers get their own process group: a Ctrl-C in the terminal reaches this process only,
    # which passes one SIGINT on (two would make a worker's trainer exit without saving). Should this
    # process die of a signal it cannot pass on (SIGKILL, the OOM killer), Linux sends them SIGTERM.
    from ..training.distributed import dying_with_parent

    workers = [subprocess.Popen(_worker_command(spec, out, url, i, quiet), start_new_session=True,
                                preexec_fn=dying_with_parent()) for i in range(1, spec.workers)]
    try:
        work(spec, study, out, lock, echo)
    except (SweepInterrupted, KeyboardInterrupt) as e:  # KeyboardInterrupt: Ctrl-C between two trials
        _stop_workers(workers)
        write_results(study, spec, out)  # what finished is worth a table already
        finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                 optuna.trial.TrialState.PRUNED)))
        what = str(e) if isinstance(e, SweepInterrupted) else "between two trials"
        raise SweepInterrupted(
            f"sweep interrupted ({what}): {finished} finished trial(s) are kept in {url}; to continue, run the "
            f"same command again: {_continue_command(spec, out, command)}",
            getattr(e, "signum", signal.SIGINT),
        ) from None
    except MnistlabError:
        # Three failed trials in a row: the trials that finished before them still get their table and best.toml
        # (they were left in study.db only, with no results.csv to say which won).
        _stop_workers(workers)
        write_results(study, spec, out)
        raise
    except BaseException:
        _stop_workers(workers)
        raise
    bad = [w.args[-1] for w in workers if w.wait() != 0]
    if bad:
        print(f"mnistlab sweep: warning: {len(bad)} worker(s) ended with an error (see above)", file=sys.stderr)
    rows, files = write_results(study, spec, out)
    return SweepResult(out=out, storage=url, study_name=spec.study_name, rows=rows, files=files)


def _check_trial_folders(spec: SweepSpec, out: Path, url: str, optuna) -> None:
    """Refuse a new study in a folder that holds another one's trial folders: trials are numbered per
    study, so its trial 0 would meet the other's trial-0000 (every trial failed with 'already holds a run')."""
    if not any(out.glob("trial-[0-9]*")):
        return
    try:
        names = optuna.get_all_study_names(storage=url)
    except Exception:  # noqa: BLE001 -- a storage that cannot be opened is open_study's to report
        return
    if spec.study_name not in names:
        others = ", ".join(repr(n) for n in names) or "none"
        raise ConfigError(f"{out} holds the trial folders of another sweep (studies in {url}: {others}), and "
                          f"study {spec.study_name!r} would number its trials from 0 again: choose another --out")


def _continue_command(spec: SweepSpec, out: Path, command: Sequence[str] | None) -> str:
    """The command line that continues the sweep: the one given (its --data-dir, --set, --trials and --storage
    matter), with the folder it chose when it had no --out."""
    args = list(command) if command else ["sweep", spec.source or "SWEEP_FILE"]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    return shlex.join(["mnistlab", *args])


def _stop_workers(workers: list[subprocess.Popen], timeout: float = 60) -> None:
    """Ctrl-C each worker once (it marks its trial failed and exits), then wait; kill what hangs."""
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for w in workers:
        try:
            w.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
