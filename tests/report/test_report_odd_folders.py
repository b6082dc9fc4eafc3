"""report and compare on what an audit fed them: odd names, damaged files, outputs over files that are not theirs."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest

from mnistlab.cli import main
from mnistlab.report import write_report
from mnistlab.report.compare import compare_runs
from mnistlab.report.runfolder import PREDICTIONS_FILE, RunFolderError, read_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_compare_will_not_replace_a_file_that_is_not_a_png(copy_run, capsys):
    # `--plot runA/summary.json` wrote the plot over the run's summary: report then found no test results.
    run = copy_run()
    summary = (run / "summary.json").read_bytes()
    assert main(["compare", str(run), "--plot", str(run / "summary.json")]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a PNG image" in err
    assert (run / "summary.json").read_bytes() == summary
    notes = run.parent / "notes.txt"
    notes.write_text("mine")
    assert main(["compare", str(run), "--plot", str(notes)]) == 2  # anyone's file, not only a run's
    assert notes.read_text() == "mine"


def test_compare_will_not_replace_a_runs_own_plot(copy_run, capsys):
    run = copy_run()
    curves = run / "plots" / "curves.png"
    before = curves.read_bytes()
    assert before.startswith(PNG)
    assert main(["compare", str(run.parent), "--plot", str(curves)]) == 2  # the run found in a folder of runs
    assert f"is in the plots folder of the run in {run}" in capsys.readouterr().err
    assert main(["lr-find", "--plot", str(curves)]) == 2  # every --plot: before the range test
    assert f"is in the plots folder of the run in {run}" in capsys.readouterr().err
    assert curves.read_bytes() == before
    old = run / "compare.png"  # compare's own earlier plot is replaced, as before, in a run's folder too
    old.write_bytes(PNG + b"old")
    assert main(["compare", str(run), "--plot", str(old)]) == 0
    assert old.read_bytes() != PNG + b"old" and old.read_bytes().startswith(PNG)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_a_folder_name_that_is_not_utf8_is_written_and_drawn(copy_run, tmp_path, capsys):
    # report: UnicodeEncodeError writing the page (its plots left behind); compare: matplotlib's TypeError.
    run = copy_run()
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9 run")
    os.rename(run, odd)
    report = write_report(odd, out=tmp_path / "out")
    page = report.path.read_text(encoding="utf-8")  # valid UTF-8, the odd byte as an escape
    assert "caf\\udce9 run" in page
    assert main(["compare", odd, "--plot", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)


def test_a_diverged_runs_report_has_no_test_figures(copy_run):
    # Its per-class accuracies are all null: the page drew a chart saying every class had no test images.
    run = copy_run()
    (run / PREDICTIONS_FILE).unlink()
    summary = json.loads((run / "summary.json").read_text())
    summary.update(test_accuracy=None, per_class_accuracy={c: None for c in summary["per_class_accuracy"]})
    (run / "summary.json").write_text(json.dumps(summary))
    assert "per_class" not in write_report(run).images
    summary["per_class_accuracy"]["3"] = 0.5  # one value is enough for a chart
    (run / "summary.json").write_text(json.dumps(summary))
    assert "per_class" in write_report(run).images


def test_report_out_will_not_replace_another_runs_report(copy_run, capsys):
    run, other = copy_run("a"), copy_run("b")
    page = (other / "report.html").read_bytes()
    assert main(["report", str(run), "--out", str(other)]) == 2
    assert "is another run's folder" in capsys.readouterr().err
    assert (other / "report.html").read_bytes() == page
    assert main(["report", str(run), "--out", str(run)]) == 0  # its own folder is where it goes by default


@pytest.mark.parametrize("damage, note", [
    (lambda run: (run / "config.toml").write_text('[early_stopping]\ncriterion = ["patience"]\n'),
     "early_stopping.criterion is ['patience'], not a name"),
    (lambda run: _predictions(run, worst_images=lambda a: np.zeros((len(a["worst_index"]), 2, 28, 28), np.uint8)),
     "worst_images are not images"),
    (lambda run: (run / "metrics.csv").write_text((run / "metrics.csv").read_text()[:-40]),
     "row for epoch 2 is cut short"),
])
def test_damaged_values_are_notes_not_tracebacks(copy_run, damage, note):
    run = copy_run()
    damage(run)
    report = write_report(run)
    assert note in " ".join(report.missing)


def test_a_cut_metrics_row_is_left_out_of_the_curves(copy_run):
    run = copy_run()
    (run / "metrics.csv").write_text((run / "metrics.csv").read_text()[:-40])
    assert [row["epoch"] for row in read_run(run).metrics] == [1.0]


def _predictions(run, **changes):
    with np.load(run / PREDICTIONS_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(run / PREDICTIONS_FILE, **{**arrays, **{k: f(arrays) for k, f in changes.items()}})


def test_compare_reads_no_test_predictions(copy_run, monkeypatch):
    # The README says compare reads summary.json, metrics.csv and config.toml; it loaded the npz too.
    import mnistlab.report.runfolder as runfolder

    monkeypatch.setattr(runfolder, "_read_predictions", lambda run: pytest.fail("compare read the predictions"))
    (row,) = compare_runs([copy_run()])
    assert row.test_accuracy is not None


def test_sigterm_in_report_leaves_none_of_its_pieces(copy_run, tmp_path, monkeypatch, capsys):
    # report had no SIGTERM handler: the plots written so far, a temporary file and the new folders stayed.
    from mnistlab.training import checkpoint

    def unhandled(signum, frame):
        raise AssertionError("report set no SIGTERM handler")  # the default action would kill pytest

    previous = signal.signal(signal.SIGTERM, unhandled)
    calls, write = [], checkpoint.atomic_write

    def killed_at_the_second(path, f):
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        write(path, f)

    monkeypatch.setattr(checkpoint, "atomic_write", killed_at_the_second)
    try:
        assert main(["report", str(copy_run()), "--out", str(tmp_path / "new" / "rep")]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == "mnistlab report: interrupted by SIGTERM\n"
    assert not (tmp_path / "new").exists()  # the first plot, the second's temporary file and the folders


def test_a_folder_of_runs_is_searched_through_links_once(copy_run, tmp_path):
    # Path.rglob skipped a run folder reached through a link; a link back up must not loop.
    run = copy_run()
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "linked").symlink_to(run, target_is_directory=True)
    (runs / "up").symlink_to(runs, target_is_directory=True)
    (row,) = compare_runs([runs])
    assert row.run == str(runs / "linked")


@pytest.mark.parametrize("command", ["compare", "lr-find"])
def test_a_plot_to_dash_is_refused_and_dot_slash_dash_names_the_file(copy_run, tmp_path, monkeypatch, capsys,
                                                                      command):
    # `--plot -` (standard output on most command lines) wrote a file named "-" in the current folder without a
    # word; a PNG on a terminal is no better. Refused before any work, as a plot over a file that is not one is.
    run = copy_run()
    monkeypatch.chdir(tmp_path)
    args = [str(run)] if command == "compare" else ["--data-dir", str(tmp_path / "no-data")]
    assert main([command, *args, "--plot", "-"]) == 2
    assert capsys.readouterr().err == (
        f"mnistlab {command}: error: - is not a file name here: a plot is a PNG image and is not written to standard "
        "output; give the file's name, e.g. plot.png (./- for a file named -)\n")
    assert not (tmp_path / "-").exists()
    assert main(["compare", str(run), "--plot", "./-"]) == 0
    assert (tmp_path / "-").read_bytes().startswith(PNG)


def test_a_plot_named_as_another_image_format_is_refused(copy_run, tmp_path, capsys):
    # `--plot curve.jpg` wrote PNG bytes under a JPEG's name, which some viewers refuse to open.
    assert main(["compare", str(copy_run()), "--plot", str(tmp_path / "curve.jpg")]) == 2
    assert capsys.readouterr().err == (f"mnistlab compare: error: {tmp_path / 'curve.jpg'}: a plot is written as a "
                                       "PNG image; give a file name ending in .png\n")
    assert not (tmp_path / "curve.jpg").exists()
