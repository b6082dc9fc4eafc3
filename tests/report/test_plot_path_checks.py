"""--plot of lr-find and compare: an empty name, ~, and a run's plots/ folder before its report is written."""

from __future__ import annotations

import pytest

from mnistlab.errors import MnistlabError
from mnistlab.report.plots import check_plot_path


def test_an_empty_plot_name_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):  # was "cannot write the plot .: it is a folder"
        with pytest.raises(MnistlabError, match="--plot needs a file name .a PNG image., got an empty one"):
            check_plot_path(empty)


def test_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    assert check_plot_path("~/lr.png") == tmp_path / "home" / "lr.png"  # --plot=~/lr.png: it was ./~/lr.png
    assert not (tmp_path / "~").exists()


def test_the_plots_folder_of_a_run_without_its_report_is_refused(tmp_path):
    # A --no-report run has no plots/ yet: a plot put there was replaced by a later `mnistlab report`
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    with pytest.raises(MnistlabError, match="is in the plots folder of the run in .*: choose a file outside it"):
        check_plot_path(run / "plots" / "curves.png")
    assert not (run / "plots").exists()
    assert check_plot_path(run / "compare.png") == run / "compare.png"  # beside the run's files: the user's
