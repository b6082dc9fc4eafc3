"""report and compare on run folders caught part way through a resume, on figures an earlier report left, and on
files an editor or a damage changed."""

from __future__ import annotations

import json

import pytest

from mnistlab.cli import main
from mnistlab.report import PREDICTIONS_FILE, read_run, write_report
from mnistlab.report.compare import compare_runs

ACC, HUGE = "\"test_accuracy\": ", "0" * 400  # an int of 401 digits: no float holds it


def resumed_on_to_epoch_3(run):
    """What a resumed run's folder holds after its epoch 3, before it ends (or after a kill): History has rewritten
    metrics.csv with the new epoch; summary.json and test_predictions.npz are still those of the part before."""
    lines = (run / "metrics.csv").read_text().splitlines()
    header, last = lines[0].split(","), lines[-1].split(",")
    row = dict(zip(header, last), epoch="3", val_accuracy="0.999")
    (run / "metrics.csv").write_text("\n".join([*lines, ",".join(row[k] for k in header)]) + "\n")


def test_a_resumed_run_that_has_not_finished_shows_no_test_of_before_the_resume(copy_run, capsys):
    # The report showed the test accuracy, confusion matrix and best epoch of the part before the resume as this
    # run's, beside curves that went on past it; compare ranked the run by that test and called it finished.
    run = copy_run()
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    resumed_on_to_epoch_3(run)
    report = write_report(run)
    assert list(report.images) == ["curves"]
    note = ("summary.json and test_predictions.npz are of the run as it was after epoch 2; metrics.csv goes on to "
            "epoch 3: it was resumed and has not finished")
    assert note in " ".join(report.missing)
    page = report.path.read_text()
    assert '<div class="v">-</div><div class="k">test accuracy</div>' in page
    assert '<div class="v">3 (-)</div><div class="k">epochs (best)</div>' in page
    assert '<div class="v">99.90%</div><div class="k">best val accuracy</div>' in page  # metrics.csv's, as compare
    assert "whose weights (best.ckpt) were tested" not in page  # best.ckpt may be epoch 3's by now
    (row,) = compare_runs([run])
    assert (row.test_accuracy, row.epochs, row.best_val_accuracy) == (None, 3, 0.999)
    assert row.stop_reason == "not finished (resumed after epoch 2)"
    assert row.model == json.loads((run / "summary.json").read_text())["model"]  # the setup still holds
    assert main(["compare", str(run), "--plot", str(run.parent / "c.png")]) == 0
    assert "not finished (resumed after epoch 2)" in capsys.readouterr().out


def test_a_run_resumed_after_ctrl_c_and_killed_is_not_shown_as_interrupted_before_its_new_epochs(copy_run):
    # Ctrl-C in epoch 2 wrote an "interrupted" summary.json (epochs 1); the resume trained epoch 2 and was killed.
    # The report said "stopped: interrupted ... at epoch 2" with "1" epoch and the first part's seconds beside
    # curves to epoch 2, and compare listed it so.
    run = copy_run()
    (run / PREDICTIONS_FILE).unlink()  # an interrupted run's predictions are removed
    summary = json.loads((run / "summary.json").read_text())
    setup = {k: summary[k] for k in ("model", "dataset", "parameters", "device")}
    stop = "interrupted by SIGINT at epoch 2, batch 3 of 8"
    (run / "summary.json").write_text(json.dumps({**setup, "stop_reason": stop, "stopped_by": "interrupted",
                                                  "epochs": 1, "train_seconds": 1e-6}))
    assert read_run(run).resumed_after == 1
    page = write_report(run).path.read_text()
    assert stop not in page
    assert '<div class="v">2 (-)</div><div class="k">epochs (best)</div>' in page
    (row,) = compare_runs([run])
    assert (row.epochs, row.stop_reason, row.test_accuracy) == (2, "not finished (resumed after epoch 1)", None)
    assert row.train_seconds > 1e-6  # metrics.csv's epochs, not the first part's seconds


def test_an_early_stop_from_before_a_resume_is_not_drawn_as_the_runs_end(copy_run):
    # The run stopped early after epoch 2, was resumed with more epochs and ran to epoch 3: last.ckpt's stopping
    # state still holds the old stop, and the report said "early stopping ended training after epoch 2".
    run = copy_run()
    resumed_on_to_epoch_3(run)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(epochs=3, stopped_by="max_epochs", stop_reason="max epochs reached (3)")
    (run / "summary.json").write_text(json.dumps(summary))
    es = read_run(run).early_stopping
    assert (es.best_epoch, es.stopped_epoch) == (1, None)
    page = write_report(run).path.read_text()
    assert "ended training after epoch 2" not in page and "was on but did not stop training" in page

    (run / "summary.json").unlink()  # killed in the resumed part: only the epochs recorded can tell
    assert read_run(run).early_stopping.stopped_epoch is None
    fresh = copy_run("fresh")  # a stop at the last epoch recorded is the run's own
    (fresh / "summary.json").unlink()
    assert read_run(fresh).early_stopping.stopped_epoch == 2


def test_a_report_removes_the_figures_of_an_earlier_report(copy_run, tmp_path):
    # plots/confusion.png and the rest stayed from a report of an earlier test (or of another run written to the
    # same --out folder) beside a page that has no such figure, and were taken for this run's.
    run = copy_run()
    (run / PREDICTIONS_FILE).unlink()
    report = write_report(run)  # per-class accuracy from summary.json; no confusion matrix, no images
    drawn = ["curves.png", "per_class.png"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == drawn == sorted(p.name for p in report.images.values())

    out = tmp_path / "shared-report"
    write_report(copy_run("other"), out=out)
    assert len(list((out / "plots").iterdir())) == 4
    write_report(run, out=out)
    assert sorted(p.name for p in (out / "plots").iterdir()) == drawn


@pytest.mark.parametrize("change, check", [
    # a spreadsheet or editor saved it with a byte-order mark: "metrics.csv holds no epochs", "cannot be read"
    (lambda run: _edit(run, "metrics.csv", lambda t: "\ufeff" + t),
     lambda run, report: [r["epoch"] for r in read_run(run).metrics] == [1.0, 2.0]),
    (lambda run: _edit(run, "summary.json", lambda t: "\ufeff" + t),
     lambda run, report: compare_runs([run])[0].test_accuracy is not None and not report.missing),
    # each of these was a traceback: OverflowError, RecursionError, matplotlib's "Axis limits cannot be NaN or Inf"
    (lambda run: _edit(run, "summary.json", lambda t: t.replace(ACC, f"{ACC}1{HUGE}, \"x\": ")),
     lambda run, report: compare_runs([run])[0].test_accuracy is None),
    (lambda run: (run / "summary.json").write_text("[" * 100_000 + "]" * 100_000),
     lambda run, report: "summary.json cannot be read (maximum recursion depth" in " ".join(report.missing)),
    (lambda run: _edit(run, "metrics.csv", lambda t: t.replace("\n2,", "\ninf,")),
     lambda run, report: list(report.images)[0] == "curves"),
], ids=["metrics.csv-bom", "summary.json-bom", "huge-int", "deep-json", "inf-epoch"])
def test_edited_and_damaged_files_are_read_or_noted(copy_run, change, check):
    run = copy_run()
    change(run)
    report = write_report(run)
    assert check(run, report)


def _edit(run, name, f):
    (run / name).write_text(f((run / name).read_text(encoding="utf-8")), encoding="utf-8")


def test_the_curves_draw_the_weight_averages_validation_values(monkeypatch):
    # metrics.csv's ema_val_loss and ema_val_accuracy (with [ema]) were in no figure: the report showed the
    # average's test accuracy with nothing to judge its epochs by.
    from matplotlib.axes import Axes

    from mnistlab.report import plots

    drawn, real = [], Axes.plot

    def plot(ax, x, y, **kw):
        drawn.append((kw["label"], list(y)))
        return real(ax, x, y, **kw)

    monkeypatch.setattr(Axes, "plot", plot)
    rows = [{"epoch": 1.0, "train_loss": 0.5, "val_loss": 0.4, "train_accuracy": 0.8, "val_accuracy": 0.85,
             "lr": 0.01},  # resumed with [ema] on from epoch 2: epoch 1 has no average
            {"epoch": 2.0, "train_loss": 0.3, "val_loss": 0.3, "train_accuracy": 0.9, "val_accuracy": 0.9,
             "ema_val_loss": 0.25, "ema_val_accuracy": 0.92, "lr": 0.005}]
    assert plots.curves_png(rows)[:8] == b"\x89PNG\r\n\x1a\n"
    average = [y for label, y in drawn if label == "weight average, validation"]
    assert len(average) == 2 and average[0][1] == 0.25 and average[1][1] == pytest.approx(92.0)
    assert all(y[0] != y[0] for y in average)  # NaN where the epoch has no average: no point drawn
    drawn.clear()
    plots.curves_png([{k: v for k, v in r.items() if not k.startswith("ema_")} for r in rows])
    assert "weight average, validation" not in [label for label, _ in drawn]


def test_compare_of_a_folder_lists_a_run_stopped_in_its_first_epoch(copy_run, tmp_path, capsys):
    # A run killed in epoch 1 holds config.toml (and last.ckpt, to resume) but no metrics yet: naming it showed
    # it as not finished, but `compare FOLDER` left it out, so a sweep of runs hid the ones that never got far.
    done = copy_run("runs/done")
    started = copy_run("runs/started")
    for f in started.iterdir():
        if f.name not in ("config.toml", "last.ckpt"):
            f.unlink() if f.is_file() else None
    other = tmp_path / "runs" / "tool"
    other.mkdir()
    (other / "config.toml").write_text("[server]\nport = 8080\n")  # another program's config.toml: no run
    rows = {row.run: row for row in compare_runs([tmp_path / "runs"])}
    assert set(rows) == {str(done), str(started)}
    assert rows[str(started)].stop_reason == "not finished (no summary.json)"
    assert rows[str(started)].model == json.loads((done / "summary.json").read_text())["model"]  # from config.toml
    assert main(["compare", str(tmp_path / "runs"), "--plot", str(tmp_path / "c.png")]) == 0
    assert "not finished (no summary.json)" in capsys.readouterr().out


def test_the_epochs_card_of_a_run_that_diverged_in_epoch_1_shows_no_best_epoch(copy_run):
    # Diverged in epoch 1: no epoch finished, and the weights as training stopped were tested (summary.json's
    # best_epoch 0). The card read "0 (0)", as if epoch 0 had been found best.
    run = copy_run()
    summary = json.loads((run / "summary.json").read_text())
    summary.update(epochs=0, best_epoch=0, use_checkpoint=None, evaluated="final weights", test_accuracy=None,
                   stopped_by="non_finite_loss", stop_reason="non-finite loss (nan) at epoch 1, step 3")
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.csv").unlink()
    page = write_report(run).path.read_text()
    assert '<div class="v">0 (-)</div><div class="k">epochs (best)</div>' in page
