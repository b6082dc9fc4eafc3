"""Real sweeps on real MNIST: in-process with pruning, Ctrl-C and a rerun, and two workers sharing a study."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sweep_helpers import import_optuna, tiny_base

optuna = import_optuna()  # skipped without Optuna, but a failure under CI=true (see sweep_helpers)

from mnistlab.cli import main  # noqa: E402
from mnistlab.config import apply_overrides, load_config  # noqa: E402
from mnistlab.sweep import load_sweep, run_sweep  # noqa: E402
from mnistlab.sweep.runner import open_study, storage_url  # noqa: E402

S = optuna.trial.TrialState
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# `mnistlab ARGS` without report.html per trial (its plots cost seconds; the report is tested elsewhere).
# Worker processes are started by the sweep itself as `python -m mnistlab` and do write it.
NO_REPORT_MAIN = """
import sys, types
import mnistlab.report
mnistlab.report.write_run_report = lambda *args, **kwargs: types.SimpleNamespace(path="(skipped in tests)")
from mnistlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def sweep_cli(*args: str, patch: str = "") -> list[str]:
    return [sys.executable, "-c", patch + NO_REPORT_MAIN, "sweep", *args]


# A Ctrl-C at a known moment: the process signals itself while trial 1 validates its first epoch
# (trial 0 has validated twice). Waiting for a line and then sleeping raced with fast trials.
CTRL_C_IN_TRIAL_1 = """
import importlib, os, signal
fit = importlib.import_module("mnistlab.training.fit")
real_evaluate, calls = fit.evaluate, []
def evaluate(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3 and os.environ.get("CTRL_C_IN_TRIAL_1"):
        os.kill(os.getpid(), signal.SIGINT)
    return real_evaluate(*args, **kwargs)
fit.evaluate = evaluate
"""


def states(path, out):
    s = load_sweep(path)
    return [t.state for t in open_study(s, storage_url(s, out)).get_trials(deepcopy=False)]


def test_a_real_sweep_prunes_a_hopeless_trial_and_writes_a_loadable_best_toml(mnist_root, tmp_path, no_report):
    # lr 1e-6 barely moves the weights: after epoch 1 it is far below the two useful rates, and the median pruner stops it.
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_base(mnist_root) + '\n[sweep]\nsampler = "grid"\npruner = "median"\n\n[sweep.params]\n'
                    '"optimizer.lr" = [0.003, 0.01, 1e-6]\n"model.channels" = [[4, 8]]\n')
    spec = load_sweep(path)
    out = tmp_path / "out"
    result = run_sweep(spec, out=out, quiet=True)
    rows = {r.number: r for r in result.rows}
    assert [rows[i].state for i in range(3)] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert rows[2].epochs == 1 and rows[0].epochs == rows[1].epochs == 2
    assert rows[2].value < 0.5 < min(rows[0].value, rows[1].value)  # measured: ~0.1 against ~0.8
    for i in range(3):  # every trial, pruned ones too, is a complete run folder
        assert (out / f"trial-{i:04d}" / "summary.json").is_file() and (out / f"trial-{i:04d}" / "best.ckpt").is_file()
    assert "pruned by the sweep at epoch 1" in (out / "trial-0002" / "summary.json").read_text()
    best = result.rows[0]
    assert best.value == max(rows[0].value, rows[1].value)
    # The objective is the best epoch's validation accuracy, as the trial's own metrics.csv says.
    metrics = (out / f"trial-{best.number:04d}" / "metrics.csv").read_text()
    assert f"{best.value}" in metrics or f"{best.value:.6f}"[:6] in metrics
    cfg = load_config(out / "best.toml")
    # its header's command works from where the sweep ran (it said --config best.toml, a file in the sweep's folder)
    assert f"train with: mnistlab train --config {out / 'best.toml'}\n" in (out / "best.toml").read_text()
    assert cfg == apply_overrides(spec.base, {"optimizer.lr": best.params["optimizer.lr"], "model.channels": [4, 8]})
    assert {p.name for p in out.iterdir()} >= {"study.db", "results.csv", "best.toml", "objective.png"}
    assert (out / "objective.png").stat().st_size > 5000


def test_ctrl_c_keeps_finished_trials_and_the_same_command_continues(mnist_root, tmp_path, no_report, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_base(mnist_root) + '\n[sweep]\nsampler = "random"\ntrials = 3\n\n[sweep.params]\n'
                    '"optimizer.lr" = {type = "float", low = 1e-3, high = 3e-2, log = true}\n')
    out = tmp_path / "out"
    command = sweep_cli(str(path), "--out", str(out), patch=CTRL_C_IN_TRIAL_1)
    proc = subprocess.run(command, capture_output=True, text=True, env={**ENV, "CTRL_C_IN_TRIAL_1": "1"}, timeout=120)
    err = proc.stderr
    assert proc.returncode == 130, err
    assert "sweep interrupted" in err and f"run the same command again: mnistlab sweep {path} --out {out}" in err
    assert "mnistlab train --resume" not in err  # the trial's folder is the study's to continue, not train's
    kept = states(path, out)
    assert kept == [S.COMPLETE, S.FAIL]  # the interrupted one is failed
    assert (out / "results.csv").is_file()

    # The same command again, in this process (the Ctrl-C above needs a process of its own, the rerun does not:
    # a second start of torch, its compiler and Optuna cost 8 s of CPU time)
    code = main(["sweep", str(path), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "continuing study 'tiny'" in captured.out
    final = states(path, out)
    assert final.count(S.COMPLETE) == 3 and final[: len(kept)] == kept  # finished trials were kept, not rerun
    assert len(final) == 3 + kept.count(S.FAIL)
    assert len(list(out.glob("trial-*"))) == len(final)


def test_two_workers_share_one_study_and_run_exactly_the_total(mnist_root, tmp_path):
    # Both processes are started here (not this one and its worker): a first process already warm, with torch and
    # its compiler loaded, could finish all four trials before the worker has loaded torch and asked for one.
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_base(mnist_root, epochs=1) + '\n[sweep]\nsampler = "tpe"\ntrials = 4\nworkers = 2\n\n'
                    '[sweep.params]\n"optimizer.lr" = {type = "float", low = 1e-3, high = 3e-2, log = true}\n')
    out = tmp_path / "out"
    # train.report reaches every trial, the worker's too (started as `python -m mnistlab`, unpatched)
    proc = subprocess.run(sweep_cli(str(path), "--out", str(out), "--set", "train.report=false"), capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "database is locked" not in proc.stderr
    assert list(out.glob("trial-*/report.html")) == [] and len(list(out.glob("trial-*/test_predictions.npz"))) == 4
    s = load_sweep(path)
    trials = open_study(s, storage_url(s, out)).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [S.COMPLETE] * 4
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{i:04d}" for i in range(4)]
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both processes ran trials
    assert len({t.params["optimizer.lr"] for t in trials}) == 4  # the workers did not propose the same values
    assert proc.stdout.count("complete") >= 4 + 4  # one line per trial as it ends, and the final table
