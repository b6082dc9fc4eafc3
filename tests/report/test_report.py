"""report.html and test_predictions.npz: written at the end of a run, rebuilt from the run folder alone."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pytest

from mnistlab.report import PREDICTIONS_FILE, RunFolderError, read_run, write_report
from mnistlab.report.html import FIGURES  # what a later report removes when it lacks one: all that a run draws
from mnistlab.report.runfolder import WORST


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_a_run_ends_with_its_report_and_test_predictions(finished_run, mnist_small):
    run_dir, result = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "early_stopping" and summary["epochs"] == 2
    assert (run_dir / "report.html").is_file()
    assert FIGURES == ("curves", "confusion", "per_class", "misclassified")
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(f"{n}.png" for n in FIGURES)

    with np.load(run_dir / PREDICTIONS_FILE, allow_pickle=False) as z:  # plain arrays, no pickles
        p = {k: z[k] for k in z.files}
    labels = mnist_small.test.labels.numpy()
    assert np.array_equal(p["labels"], labels)
    assert np.array_equal(p["predictions"], result.test.predictions.numpy())
    assert (p["predictions"] == labels).mean() == pytest.approx(summary["test_accuracy"], abs=0)
    assert np.array_equal(p["confusion"], np.bincount(labels * 10 + p["predictions"], minlength=100).reshape(10, 10))
    assert p["probabilities"].shape == (10000, 10) and np.allclose(p["probabilities"].sum(1), 1, atol=1e-5)
    assert list(p["classes"]) == [str(d) for d in range(10)]
    worst = p["worst_index"]
    assert len(worst) == WORST and (p["predictions"][worst] != labels[worst]).all()
    p_true = p["probabilities"][worst, labels[worst]]
    assert (np.diff(p_true) >= 0).all()  # most confidently wrong first
    wrong = p["predictions"] != labels
    assert p_true[-1] <= np.sort(p["probabilities"][wrong, labels[wrong]])[WORST - 1]
    assert np.array_equal(p["worst_images"], mnist_small.test.images[worst].numpy())


def test_the_report_needs_only_the_run_folder(copy_run, monkeypatch, tmp_path):
    import mnistlab.data.datasets as datasets

    def no_data(*args, **kwargs):
        raise AssertionError("the report read the dataset")

    monkeypatch.setattr(datasets, "load_raw", no_data)
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "nowhere"))
    run = copy_run()
    for f in ("report.html", "best.ckpt"):  # no model is needed either
        (run / f).unlink()
    report = write_report(run)
    assert report.missing == []
    page = report.path.read_text()
    images = embedded_images(page)
    assert len(images) == 4 and all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert images == [(run / "plots" / f"{n}.png").read_bytes() for n in FIGURES]
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained: nothing loaded from elsewhere
    assert "<script" not in page
    # what early stopping decided, from last.ckpt
    assert "ended training after epoch 2" in page and "restored the weights of epoch 1" in page
    best = json.loads((run / "summary.json").read_text())["best_epoch"]
    assert f"Dashed green: epoch {best}, whose weights (best.ckpt) were tested" in page
    # config and summary
    assert 'monitor = &quot;epoch&quot;' in page and "<th>stop_reason</th>" in page
    summary = json.loads((run / "summary.json").read_text())  # the subtitle names the machine (and bf16)
    bf16 = ", bf16 autocast" if summary["precision"] == "bf16" else ""
    assert f"cpu ({html.escape(summary['cpu'])}){bf16}, torch {summary['torch']}</p>" in page
    assert "Not in this report" not in page


def test_an_unfinished_run_gets_what_it_has_and_a_list_of_what_is_missing(copy_run):
    run = copy_run()
    (run / PREDICTIONS_FILE).unlink()
    (run / "last.ckpt").unlink()
    summary = json.loads((run / "summary.json").read_text())
    interrupted = {k: summary[k] for k in ("model", "dataset", "parameters", "device", "train_images", "val_images")}
    # Ctrl-C in epoch 3: the 2 epochs done are in metrics.csv (epochs past them would be a resume's)
    interrupted.update(stop_reason="interrupted by SIGINT at epoch 3, batch 3 of 8", stopped_by="interrupted", epochs=2)
    (run / "summary.json").write_text(json.dumps(interrupted))
    report = write_report(run)
    page = report.path.read_text()
    assert len(embedded_images(page)) == 1 and list(report.images) == ["curves"]
    assert "Not in this report" in page
    missing = " ".join(report.missing)
    assert PREDICTIONS_FILE in missing and "no confusion matrix" in missing
    assert "no test result (interrupted by SIGINT" in missing and "last.ckpt is missing" in missing

    for name in ("metrics.csv", "summary.json"):  # a folder with only config.toml still gets a page
        (run / name).unlink()
    report = write_report(run)
    assert report.images == {} and "metrics.csv is missing" in " ".join(report.missing)
    assert "<h2>Config</h2>" in report.path.read_text()

    (run / "config.toml").unlink()
    with pytest.raises(RunFolderError, match="is not a run folder"):
        write_report(run)


def test_damaged_files_are_reported_not_raised(copy_run):
    run = copy_run()
    (run / PREDICTIONS_FILE).write_bytes(b"not a zip")
    (run / "summary.json").write_text("{ broken")
    (run / "last.ckpt").write_bytes(b"garbage")
    report = write_report(run)
    missing = " ".join(report.missing)
    assert f"{PREDICTIONS_FILE} cannot be read" in missing and "summary.json cannot be read" in missing
    assert "last.ckpt cannot be read" in missing
    assert list(report.images) == ["curves"]


def test_damaged_values_and_a_csv_past_its_limits_are_reported_not_raised(copy_run):
    # Each of these raised a traceback in `mnistlab report`: a csv field past csv's size limit, a best_epoch
    # that is text (int()), per-class accuracies as a list (.values()), a config section that is a plain value
    # (compare's .get), and an npz whose class list does not fit its arrays (an IndexError in the plot).
    run = copy_run()
    (run / "metrics.csv").write_text('epoch,x\n1,"' + "a" * 200_000 + "\n")
    summary = json.loads((run / "summary.json").read_text())
    summary.update(best_epoch="x", per_class_accuracy=[0.1, 0.2])
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.toml").write_text('model = "fast"\n\n[train]\nepochs = 1\n')  # hand-written
    with np.load(run / PREDICTIONS_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(run / PREDICTIONS_FILE, **{**arrays, "classes": arrays["classes"][:5]})
    report = write_report(run)
    missing = " ".join(report.missing)
    assert "metrics.csv cannot be read (field larger than field limit" in missing
    assert "summary.json's best_epoch is str 'x', not what a run writes there: left out." in missing
    assert "summary.json's per_class_accuracy is list [0.1, 0.2]" in missing
    assert "config.toml has model where a [section] belongs" in missing
    assert f"{PREDICTIONS_FILE} cannot be read (inconsistent arrays: the confusion matrix is not 5 x 5; a label or " \
           "prediction is not a class; probabilities are not one row per image" in missing
    assert report.images == {} and "test accuracy" in report.path.read_text()
    from mnistlab.report.compare import compare_runs

    (row,) = compare_runs([run])
    assert row.model == summary["model"] and row.test_accuracy == summary["test_accuracy"]


def test_read_run_marks_the_epochs(finished_run):
    run = read_run(finished_run[0])
    es = run.early_stopping
    assert (es.rule, es.monitor, es.best_epoch, es.stopped_epoch, es.restored) == ("EarlyStopping", "epoch", 1, 2, True)
    assert [int(r["epoch"]) for r in run.metrics] == [1, 2]
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"} <= set(run.metrics[0])


def test_a_perfect_test_set_and_other_class_names(copy_run):
    import torch

    from mnistlab.data.datasets import DATASETS
    from mnistlab.report import save_test_predictions
    from mnistlab.training.evaluate import Evaluation

    run = copy_run()
    classes = list(DATASETS["fashion-mnist"].classes)
    labels = torch.arange(50) % 10
    perfect = Evaluation(loss=0.0, accuracy=1.0, per_class_accuracy=[1.0] * 10,
                         confusion=torch.diag(torch.full((10,), 5)), predictions=labels, labels=labels,
                         probabilities=torch.nn.functional.one_hot(labels, 10).float())
    save_test_predictions(run, perfect, torch.zeros(50, 1, 28, 28, dtype=torch.uint8), classes)
    report = write_report(run)
    page = report.path.read_text()
    assert list(report.images) == ["curves", "confusion", "per_class"]
    assert "None: every test image was classified correctly." in page
    assert read_run(run).classes == classes


def test_a_report_that_fails_does_not_lose_the_run(mnist_root, tmp_path, monkeypatch, capsys):
    import mnistlab.report
    from mnistlab.config import Config, apply_overrides
    from mnistlab.training.run import train

    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(mnistlab.report, "write_run_report", broken)
    cfg = apply_overrides(Config(), {
        "data.dir": str(mnist_root), "data.download": False, "data.train_limit": 1000, "data.val_size": 200,
        "train.epochs": 1, "train.threads": 2, "train.progress": False, "tensorboard.enabled": False,
    })
    result = train(cfg, out=tmp_path / "run", quiet=True)
    assert result.summary["test_accuracy"] > 0.2  # one short epoch: the run only has to finish
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_accuracy"] == result.summary["test_accuracy"]
    assert not (tmp_path / "run" / "report.html").exists()
    err = capsys.readouterr().err
    assert "warning: could not write the report (RuntimeError: matplotlib exploded)" in err
    assert f"mnistlab report {tmp_path / 'run'}" in err


def test_report_false_leaves_the_report_for_later(mnist_root, tmp_path, monkeypatch):
    # What the benchmarks' throwaway runs use: no plotting at all, and the run folder still has what
    # `mnistlab report` needs to write the report afterwards.
    import mnistlab.report
    from mnistlab.config import Config, apply_overrides
    from mnistlab.training.run import train

    monkeypatch.setattr(mnistlab.report, "write_run_report", lambda *a, **k: pytest.fail("report=False plotted"))
    cfg = apply_overrides(Config(), {
        "data.dir": str(mnist_root), "data.download": False, "data.train_limit": 256, "data.val_size": 100,
        "train.epochs": 1, "train.progress": False, "tensorboard.enabled": False, "model.width": 0.25,
    })
    result = train(cfg, out=tmp_path / "run", quiet=True, report=False)
    assert not (tmp_path / "run" / "report.html").exists() and not (tmp_path / "run" / "plots").exists()
    assert (tmp_path / "run" / PREDICTIONS_FILE).is_file()
    assert read_run(tmp_path / "run").summary["test_accuracy"] == result.summary["test_accuracy"]


def test_a_report_that_cannot_be_written_leaves_no_plots_behind(copy_run, tmp_path, monkeypatch):
    import mnistlab.report.html

    # two small figures stand in for the drawn ones (drawing them is what the other tests check, and costs seconds)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    png = buf.getvalue()
    monkeypatch.setattr(mnistlab.report.html, "_figures", lambda run: [("curves", "t", "c", png), ("confusion", "t", "c", png)])
    run = copy_run()
    out = tmp_path / "new" / "report"
    (out / "report.html").mkdir(parents=True)  # the page's own path is taken by a folder
    with pytest.raises(RunFolderError, match="cannot write the report"):
        write_report(run, out=out)
    assert not (out / "plots").exists()


def test_names_with_dollar_signs_are_drawn_as_text_not_parsed_as_maths():
    # A class or run named "$\foo$" (a crafted checkpoint, a folder name) raised matplotlib's mathtext
    # ParseFatalException out of report, compare and sweep.
    from mnistlab.report import plots

    classes = [r"$\foo$", "a$x$", *map(str, range(8))]
    for png in (
        plots.confusion_png(np.eye(10, dtype=np.int64) * 3, classes),
        plots.per_class_png([0.9] * 10, classes, overall=0.9),
        plots.misclassified_png(np.zeros((1, 1, 28, 28), dtype=np.uint8), [0], [1], [0.6], [0.3], classes, [5]),
        plots.compare_png([{"label": r"runs/m$\foo$", "train_seconds": 3.0, "test_accuracy": 0.9},
                           {"label": "b", "train_seconds": 5.0, "test_accuracy": 0.95}]),
    ):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
