"""A run is not written into a folder of runs (`--out runs`): its files would lie among them, and `compare runs`
then took the folder for this one run and left the others out."""

from pathlib import Path

import pytest

from mnistlab.errors import RunDirError
from mnistlab.training.run import prepare_run_dir


def _run_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text("{}")
    return path


def test_a_folder_holding_run_folders_is_refused(tmp_path):
    for name in ("a", "b", "c", "d"):
        _run_folder(tmp_path / "runs" / name)
    with pytest.raises(RunDirError, match=r"runs holds run folders \(a, b, c and 1 more\): this run's files would lie "
                                          r"among them, .*a folder of its own, such as \S+runs/NAME"):
        prepare_run_dir(tmp_path / "runs", resume=False)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a", "b", "c", "d"]


def test_a_folder_of_other_files_or_a_new_one_inside_runs_is_taken(tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    prepare_run_dir(tmp_path / "project", resume=False)  # no runs in it: the user's choice
    _run_folder(tmp_path / "runs" / "a")
    prepare_run_dir(tmp_path / "runs" / "b", resume=False)
    assert (tmp_path / "runs" / "b").is_dir()
