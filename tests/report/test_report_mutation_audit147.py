"""Audit 147: hand-made mutation testing of the report (plots, compare, the page, reading a run folder).

Each test here kills mutants of ``mnistlab.report`` that every other report test let live: it drives the
functions on small hand-made run folders and checks what is drawn or written, not only that something is.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mnistlab.report import compare_runs, plots
from mnistlab.report import html as report_html
from mnistlab.report.compare import format_table, write_compare_plot
from mnistlab.report.runfolder import read_run, save_test_predictions

DIGITS = [str(d) for d in range(10)]
HEADER = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds\n"
# Epoch 2 has the lowest validation loss (what best.ckpt holds with monitor val_loss), epoch 3 the highest accuracy.
METRICS = HEADER + ("1,0.9,0.70,0.50,0.80,0.1,1.0\n"
                    "2,0.5,0.85,0.30,0.88,0.1,1.0\n"
                    "3,0.3,0.90,0.35,0.93,0.01,1.0\n"
                    "4,0.2,0.95,0.40,0.91,0.001,1.0\n")


def make_run(folder: Path, *, summary=None, metrics=METRICS, config=None, callbacks=None, predictions=None) -> Path:
    folder.mkdir(parents=True)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (folder / "metrics.csv").write_text(metrics)
    if config is not None:
        (folder / "config.toml").write_text(config)
    if callbacks is not None:  # last.ckpt as the report reads it: only the callbacks' states
        torch.save({"callbacks": callbacks}, folder / "last.ckpt")
    if predictions is not None:
        np.savez_compressed(folder / "test_predictions.npz", **predictions)
    return folder


def record(monkeypatch, cls, name):
    """The calls of ``cls.name`` as (args, kwargs), still calling through."""
    calls, real = [], getattr(cls, name)

    def spy(self, *args, **kwargs):
        calls.append((args, kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)
    return calls


def predictions_of(labels, predicted, probabilities, classes=DIGITS):
    """test_predictions.npz's arrays, as save_test_predictions writes them from an evaluation."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    evaluation = SimpleNamespace(labels=torch.as_tensor(labels), predictions=torch.as_tensor(predicted),
                                 probabilities=torch.as_tensor(np.asarray(probabilities, np.float32)),
                                 confusion=torch.as_tensor(confusion))
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return evaluation, images


# ---- the curves: which epoch is marked -------------------------------------------------------------------------

def test_the_curves_mark_the_tested_epoch_the_stop_and_the_epoch_early_stopping_chose(monkeypatch):
    lines = record(monkeypatch, Axes, "axvline")
    plots.curves_png([{"epoch": e, "val_loss": 1.0 / e} for e in range(1, 6)], best_epoch=2, stopped_epoch=5,
                     chosen_epoch=3)
    marks = {(args[0], kw["color"]) for args, kw in lines}
    assert marks == {(2, plots.BEST), (5, plots.STOP), (3, plots.CHOSEN)}
    assert len(lines) == 9  # each of the three panels
    # early stopping's choice is the tested epoch: one line, the tested one's
    lines.clear()
    plots.curves_png([{"epoch": e, "val_loss": 1.0 / e} for e in range(1, 6)], best_epoch=3, chosen_epoch=3)
    assert {(args[0], kw["color"]) for args, kw in lines} == {(3, plots.BEST)}


def test_the_learning_rate_panel_draws_the_lr_column_and_accuracy_is_in_percent(monkeypatch):
    plotted = record(monkeypatch, Axes, "plot")
    rows = [{"epoch": 1.0, "val_accuracy": 0.8, "train_accuracy": 0.7, "lr": 0.1, "val_loss": 0.5},
            {"epoch": 2.0, "val_accuracy": 0.9, "train_accuracy": 0.75, "lr": 0.01, "val_loss": 0.4}]
    plots.curves_png(rows)
    by_label = {kw["label"]: list(args[1]) for args, kw in plotted}
    assert by_label["learning rate"] == [0.1, 0.01]
    assert by_label["validation"] in ([80.0, 90.0], [0.5, 0.4])
    drawn_values = sorted(tuple(args[1]) for args, kw in plotted if kw["label"] == "validation")
    assert drawn_values == [(0.5, 0.4), (80.0, 90.0)]  # val_loss as it is, val_accuracy in percent
    drawn_train = sorted(tuple(args[1]) for args, kw in plotted if kw["label"] == "train")
    assert drawn_train == [(70.0, 75.0)]


def test_the_report_marks_the_tested_epoch_and_early_stoppings_choice_from_the_run_folder(tmp_path, monkeypatch):
    # best.ckpt (epoch 2) was tested; early stopping (patience on val_loss) judged epoch 3 best and stopped after 4
    run = make_run(tmp_path / "run", config='[early_stopping]\ncriterion = "patience"\npatience = 1\n',
                   summary={"model": "cnn", "dataset": "mnist", "epochs": 4, "best_epoch": 2, "test_accuracy": 0.9,
                            "stopped_by": "early_stopping", "restored_by_early_stopping": False},
                   callbacks={"EarlyStopping": {"best_epoch": 3, "stopped_epoch": 4}})
    seen = {}
    monkeypatch.setattr(plots, "curves_png", lambda rows, **kw: seen.update(kw) or b"")
    monkeypatch.setattr(report_html, "_png_size", lambda png: (1, 1))
    (curves,) = [f for f in report_html._figures(read_run(run)) if f[0] == "curves"]
    assert seen == {"best_epoch": 2, "stopped_epoch": 4, "chosen_epoch": 3, "chosen_label": "early stopping's best"}
    caption = curves[2]
    assert "epoch 2, whose weights (best.ckpt) were tested" in caption
    assert "(EarlyStopping on val_loss) ended training after epoch 4" in caption
    assert "It judged best epoch 3; dash-dotted purple." in caption
    # restored: the tested checkpoint is early stopping's best epoch (summary.json says so, no last.ckpt needed)
    (run / "last.ckpt").unlink()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "best_epoch": 3, "restored_by_early_stopping": True}))
    (curves,) = [f for f in report_html._figures(read_run(run)) if f[0] == "curves"]
    assert seen == {"best_epoch": 3, "stopped_epoch": 4, "chosen_epoch": 3, "chosen_label": "early stopping restored"}
    assert "It restored the weights of epoch 3 (the same epoch as best.ckpt)." in curves[2]


def test_a_stop_is_drawn_only_where_the_run_ended_by_it(tmp_path):
    config = '[early_stopping]\ncriterion = "patience"\n'
    ended = make_run(tmp_path / "ended", config=config, 
                       callbacks={"EarlyStopping": {"best_epoch": 2, "stopped_epoch": 4}})
    assert read_run(ended).early_stopping.stopped_epoch == 4  # no summary: the last epoch recorded is the stop
    went_on = make_run(tmp_path / "on", config=config, 
                       callbacks={"EarlyStopping": {"best_epoch": 2, "stopped_epoch": 3}})
    info = read_run(went_on).early_stopping
    assert info.stopped_epoch is None and info.best_epoch == 2 and info.monitor == "val_loss"
    # summary.json says max_epochs ended it: a stop in the state (from before a resume) is not the end
    other = make_run(tmp_path / "other", config=config, summary={"epochs": 4, "stopped_by": "max_epochs"},
                     callbacks={"EarlyStopping": {"best_epoch": 2, "stopped_epoch": 4}})
    assert read_run(other).early_stopping.stopped_epoch is None


# ---- the confusion matrix and the per-class chart --------------------------------------------------------------

def _three_as_five():
    labels = [3] * 10 + [5] * 4 + [1]
    predicted = [3] * 6 + [5] * 3 + [8] + [5] * 3 + [3] + [1]  # three 3s taken for 5s, one 5 for a 3
    probabilities = np.full((len(labels), 10), 0.01, np.float32)
    probabilities[np.arange(len(labels)), predicted] = 0.91
    return labels, predicted, probabilities


def test_the_confusion_cell_true_3_predicted_5_counts_the_3s_taken_for_5s(tmp_path, monkeypatch):
    evaluation, images = predictions_of(*_three_as_five())
    run = make_run(tmp_path / "run", summary={"model": "cnn", "test_accuracy": 10 / 15})
    save_test_predictions(run, evaluation, images, DIGITS)
    texts = record(monkeypatch, Axes, "text")
    shown = record(monkeypatch, Axes, "imshow")
    labels = record(monkeypatch, Axes, "set_xlabel")
    cm = read_run(run).predictions["confusion"]
    plots.confusion_png(cm, DIGITS)
    at = {(args[0], args[1]): args[2] for args, _ in texts}  # (x: column, y: row) -> count written there
    assert at[(5, 3)] == "3" and at[(3, 5)] == "1" and at[(3, 3)] == "6" and at[(8, 3)] == "1"
    assert (8, 5) not in at and len(at) == 6  # zero cells are left blank
    (frac,), _ = shown[0]
    assert frac[3, 5] == pytest.approx(0.3) and frac[5, 3] == pytest.approx(0.25)  # fractions of the true class
    assert [args[0] for args, _ in labels] == ["predicted"]


def test_per_class_accuracy_is_of_each_true_class(tmp_path, monkeypatch):
    evaluation, images = predictions_of(*_three_as_five())
    run = make_run(tmp_path / "run", summary={"model": "cnn", "test_accuracy": 10 / 15})
    save_test_predictions(run, evaluation, images, DIGITS)
    seen = {}
    monkeypatch.setattr(plots, "per_class_png", lambda acc, classes, overall: seen.update(acc=acc, overall=overall))
    monkeypatch.setattr(plots, "misclassified_png", lambda *a, **k: b"")
    monkeypatch.setattr(plots, "curves_png", lambda *a, **k: b"")
    report_html._figures(read_run(run))
    assert seen["acc"][3] == pytest.approx(0.6) and seen["acc"][5] == pytest.approx(0.75) and seen["acc"][1] == 1.0
    assert seen["acc"][0] is None and seen["overall"] == pytest.approx(10 / 15)  # no test image of class 0


def test_the_worst_classes_are_red_and_the_overall_line_is_in_percent(monkeypatch):
    bars = record(monkeypatch, Axes, "barh")
    lines = record(monkeypatch, Axes, "axvline")
    plots.per_class_png([0.9, 0.5, 0.99, 0.5], ["a", "b", "c", "d"], overall=0.72)
    ((_, _), kw), = bars
    assert kw["color"] == ["#1f77b4", "#d62728", "#1f77b4", "#d62728"]
    ((x,), _), = lines
    assert x == pytest.approx(72.0)
    bars.clear()
    plots.per_class_png([0.7, 0.7], ["a", "b"])  # all equal: none is the worst
    assert bars[0][1]["color"] == ["#1f77b4", "#1f77b4"]


# ---- the misclassified images ----------------------------------------------------------------------------------

def test_the_worst_misclassified_are_the_least_probable_for_their_true_class_first():
    labels = [0, 1, 2, 3, 4]
    predicted = [0, 7, 7, 7, 4]
    probabilities = np.full((5, 10), 0.0, np.float32)
    probabilities[:, 7] = 0.5
    probabilities[[0, 1, 2, 3, 4], labels] = [0.9, 0.3, 0.05, 0.2, 0.9]
    evaluation, images = predictions_of(labels, predicted, probabilities)

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with np.load(save_test_predictions(d, evaluation, images, DIGITS)) as z:
            assert z["worst_index"].tolist() == [2, 3, 1]
            assert z["worst_images"][:, 0, 0, 0].tolist() == [2, 3, 1]  # each image is that test image


def test_a_misclassified_images_title_gives_its_true_and_predicted_class_and_their_probabilities(tmp_path, monkeypatch):
    labels, predicted = [3, 3, 4], [3, 5, 9]
    probabilities = np.full((3, 10), 0.0, np.float32)
    probabilities[1, 3], probabilities[1, 5] = 0.10, 0.80
    probabilities[2, 4], probabilities[2, 9] = 0.30, 0.60
    evaluation, images = predictions_of(labels, predicted, probabilities)
    run = make_run(tmp_path / "run", summary={"model": "cnn", "test_accuracy": 1 / 3})
    save_test_predictions(run, evaluation, images, DIGITS)
    texts = record(monkeypatch, Figure, "text")
    monkeypatch.setattr(plots, "curves_png", lambda *a, **k: b"")
    figures = report_html._figures(read_run(run))
    titles = [args[2] for args, _ in texts if len(args) > 2 and str(args[2]).startswith("#")]
    assert titles == ["#1  true 3 (10%)\npredicted 5 (80%)", "#2  true 4 (30%)\npredicted 9 (60%)"]
    (caption,) = [f[2] for f in figures if f[0] == "misclassified"]
    assert caption.startswith("The 2 test images") and "(of 2 misclassified)" in caption


def test_one_misclassified_image_is_shown(tmp_path, monkeypatch):
    evaluation, images = predictions_of([3, 4], [5, 4], np.full((2, 10), 0.1, np.float32))
    run = make_run(tmp_path / "run", summary={"model": "cnn", "test_accuracy": 0.5})
    save_test_predictions(run, evaluation, images, DIGITS)
    monkeypatch.setattr(plots, "curves_png", lambda *a, **k: b"")
    assert "misclassified" in [f[0] for f in report_html._figures(read_run(run))]


# ---- compare ---------------------------------------------------------------------------------------------------

def test_compare_ranks_by_test_accuracy_best_first_and_an_unfinished_run_by_its_best_ckpt_epoch(tmp_path):
    common = {"model": "cnn", "dataset": "mnist", "device": "cpu", "stop_reason": "max epochs reached"}
    make_run(tmp_path / "runs" / "b", summary={**common, "test_accuracy": 0.95, "train_seconds": 30.0, "epochs": 4})
    make_run(tmp_path / "runs" / "a", summary={**common, "test_accuracy": 0.90, "train_seconds": 10.0, "epochs": 4})
    make_run(tmp_path / "runs" / "c", summary={**common, "test_accuracy": 0.95, "train_seconds": 20.0, "epochs": 4})
    make_run(tmp_path / "runs" / "u", config='[model]\nname = "cnn"\n[checkpoint]\nmonitor = "val_loss"\n')
    rows = compare_runs([tmp_path / "runs"])
    assert [Path(r.run).name for r in rows] == ["c", "b", "a", "u"]  # equal accuracy: the faster first
    unfinished = rows[-1]
    assert unfinished.test_accuracy is None and unfinished.best_val_accuracy == 0.88  # epoch 2, the lowest val_loss
    assert unfinished.epochs == 4 and unfinished.train_seconds == 4.0
    assert unfinished.stop_reason == "not finished (no summary.json)"
    table = format_table(rows).splitlines()
    assert table[2].split()[:2] == [str(tmp_path / "runs" / "c"), "cnn"] and "95.00%" in table[2]
    assert "88.00%" in table[5] and table[5].split()[-4:] == ["not", "finished", "(no", "summary.json)"]


def test_compare_puts_runs_of_an_unknown_dataset_after_the_named_ones(tmp_path):
    make_run(tmp_path / "f", summary={"model": "cnn", "dataset": "fashion", "test_accuracy": 0.9})
    make_run(tmp_path / "m", summary={"model": "cnn", "dataset": "mnist", "test_accuracy": 0.99})
    make_run(tmp_path / "x", summary={"model": "cnn", "test_accuracy": 0.999})
    rows = compare_runs([tmp_path / "x", tmp_path / "m", tmp_path / "f"])
    assert [Path(r.run).name for r in rows] == ["f", "m", "x"]


def test_the_compare_plot_gets_each_runs_dataset_and_accuracy_in_percent(tmp_path, monkeypatch):
    make_run(tmp_path / "f", summary={"model": "cnn", "dataset": "fashion", "test_accuracy": 0.9, "train_seconds": 5.0})
    make_run(tmp_path / "m", summary={"model": "cnn", "dataset": "mnist", "test_accuracy": 0.99, "train_seconds": 9.0})
    seen = []
    real = plots.compare_png
    monkeypatch.setattr(plots, "compare_png", lambda points: seen.append(points) or real(points))
    dots = record(monkeypatch, Axes, "scatter")
    write_compare_plot(compare_runs([tmp_path]), tmp_path / "c.png")
    assert {(p["label"], p["group"]) for p in seen[0]} == {("f (cnn)", "fashion"), ("m (cnn)", "mnist")}
    assert sorted(float(args[1][0]) for args, _ in dots) == [pytest.approx(90.0), pytest.approx(99.0)]
    # each group's front is of its own runs, by their index among all the points
    assert plots.group_fronts(seen[0]) == {"fashion": ([0], [0]), "mnist": ([1], [1])}


# ---- the page --------------------------------------------------------------------------------------------------

def test_the_page_escapes_what_comes_from_the_run_folder(tmp_path):
    bad = "<script>alert(1)<b>"
    run = make_run(tmp_path / bad, summary={"model": bad, "dataset": "mnist", "stop_reason": bad, "note": bad,
                                            "test_accuracy": "x", "device": "cpu"},
                   config=f'# {bad}\n[model]\nname = "cnn"\n')
    page = report_html.write_report(run).path.read_text()
    assert "<script>" not in page and "<b>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;b&gt;") >= 6  # title, h1, folder, stop reason, table, config


def test_the_cards_show_percent_and_an_unfinished_runs_best_epoch_accuracy(tmp_path):
    run = make_run(tmp_path / "run", config='[checkpoint]\nmonitor = "val_loss"\n')
    page = report_html.render_html(read_run(run), [])
    assert '<div class="v">88.00%</div><div class="k">best val accuracy</div>' in page
    finished = make_run(tmp_path / "done", summary={"model": "cnn", "test_accuracy": 0.9876, "epochs": 4,
                                                   "best_epoch": 2, "best_val_accuracy": 0.88})
    page = report_html.render_html(read_run(finished), [])
    assert '<div class="v">98.76%</div><div class="k">test accuracy</div>' in page


# ---- reading a run folder --------------------------------------------------------------------------------------

def test_a_finished_runs_best_val_accuracy_and_seconds_are_summary_jsons(tmp_path):
    run = read_run(make_run(tmp_path / "run", summary={"epochs": 4, "best_val_accuracy": 0.5, "train_seconds": 99.0}))
    assert run.best_val_accuracy == 0.5 and run.train_seconds == 99.0 and run.last_epoch == 4


def test_an_unfinished_run_in_min_mode_by_a_monitor_that_is_not_a_loss(tmp_path):
    # checkpoint.mode min on val_accuracy (odd, but what best.ckpt then holds): epoch 1's
    config = '[checkpoint]\nmonitor = "val_accuracy"\nmode = "min"\n'
    assert read_run(make_run(tmp_path / "run", config=config)).best_val_accuracy == 0.80


def test_a_run_resumed_past_its_summary_keeps_only_the_setup(tmp_path):
    run = read_run(make_run(tmp_path / "run", summary={"model": "cnn", "epochs": 3, "test_accuracy": 0.9,
                                                       "best_val_accuracy": 0.93}))
    assert run.resumed_after == 3 and run.summary == {"model": "cnn"} and run.best_val_accuracy == 0.93
    same = read_run(make_run(tmp_path / "same", summary={"model": "cnn", "epochs": 4, "test_accuracy": 0.9}))
    assert same.resumed_after is None and same.summary["test_accuracy"] == 0.9


def test_compare_imports_on_python_3_10_where_tomllib_is_tomli(tmp_path):
    # requires-python >= 3.10, but compare.py imported tomllib (3.11+) unguarded: on 3.10 `import mnistlab.report`
    # failed, and with it `mnistlab report`, `mnistlab compare` and the report at the end of every run.
    import subprocess
    import sys

    script = ("import sys\ntry:\n    import tomllib\nexcept ModuleNotFoundError:\n    pass  # on 3.10 itself\n"
              "else:\n    sys.modules['tomli'] = tomllib\n    sys.modules['tomllib'] = None  # as on 3.10\n"
              "from mnistlab.report.compare import compare_runs\n"
              f"print(compare_runs([{str(tmp_path)!r}])[0].model)\n")
    make_run(tmp_path / "run", summary={"model": "cnn", "test_accuracy": 0.9}, config='[model]\nname = "cnn"\n')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "cnn"
