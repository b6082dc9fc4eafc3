"""Audit 138: one number, the same everywhere it is shown (report, compare, evaluate, summary.json, ...)."""

from __future__ import annotations

from pathlib import Path

from mnistlab.report import compare_runs, write_report
from mnistlab.report.runfolder import read_run

_HEADER = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds\n"


def _unfinished_run(folder: Path, monitor: str | None) -> Path:
    """A run folder as a run leaves it while it trains (or after a kill): config.toml and metrics.csv, no
    summary.json. Epoch 1 has the lowest validation loss, epoch 2 the highest validation accuracy."""
    folder.mkdir()
    checkpoint = f'[checkpoint]\nmonitor = "{monitor}"\n' if monitor else ""
    (folder / "config.toml").write_text(f'[model]\nname = "cnn"\n\n[data]\ndataset = "mnist"\n\n{checkpoint}')
    (folder / "metrics.csv").write_text(_HEADER + "1,0.6,0.80,0.30,0.90,0.01,1.0\n"
                                                  "2,0.4,0.88,0.35,0.92,0.01,1.0\n"
                                                  "3,0.3,0.90,0.40,0.91,0.01,1.0\n")
    return folder


def test_an_unfinished_runs_best_val_accuracy_is_that_of_the_epoch_best_ckpt_holds(tmp_path):
    # With checkpoint.monitor = val_loss, best.ckpt holds epoch 1 (val_loss 0.30, accuracy 90%): that is what
    # summary.json's best_val_accuracy says once the run finishes, and what `evaluate RUN` tests. While the run
    # was unfinished, compare and the report showed the highest accuracy in metrics.csv (92%, epoch 2) instead.
    run = _unfinished_run(tmp_path / "by_loss", "val_loss")
    assert read_run(run).best_val_accuracy == 0.90
    (row,) = compare_runs([run])
    assert row.best_val_accuracy == 0.90
    page = write_report(run).path.read_text()
    assert '<div class="v">90.00%</div><div class="k">best val accuracy</div>' in page
    # The default monitor (val_accuracy), and a config that names none: the highest, as before.
    assert read_run(_unfinished_run(tmp_path / "by_acc", "val_accuracy")).best_val_accuracy == 0.92
    assert read_run(_unfinished_run(tmp_path / "no_section", None)).best_val_accuracy == 0.92
