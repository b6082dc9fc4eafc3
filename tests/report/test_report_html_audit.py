"""report.html read as a user reads it: the run's name, and what the page says early stopping did."""

from __future__ import annotations

import json
import re

from mnistlab.cli import main
from mnistlab.report import read_run, write_report


def caption(page: str) -> str:
    """The training curves' caption."""
    return re.search(r'id="img-curves"[^>]*><figcaption>([^<]*)</figcaption>', page).group(1)


def test_a_run_given_as_dot_or_dot_dot_is_named_by_its_folder(copy_run, monkeypatch):
    # `mnistlab report .` from inside the run folder named the run "" in the title and the heading ("..": "..").
    run = copy_run("my-run")
    monkeypatch.chdir(run)
    page = write_report(".").path.read_text()
    assert "<code>my-run</code>" in page and "(my-run)</title>" in page
    monkeypatch.chdir(run / "plots")
    assert "<code>my-run</code>" in write_report("..").path.read_text()


def test_restore_turned_on_after_the_best_epoch_is_not_said_to_have_restored(mnist_root, tmp_path):
    # Early stopping judged epoch 1 best (it watches `epoch` in min mode) without keeping its weights; a resume
    # then turned restore_best_weights on: there were no weights to restore, summary.json says so and best.ckpt
    # (the best validation accuracy's) was tested. The page said "It restored the weights of epoch 1".
    run = tmp_path / "run"
    common = ["--quiet", "--set", "train.threads=1", "--set", "tensorboard.enabled=false"]
    assert main(["train", "--model", "cnn", "--set", "model.width=0.25", "--epochs", "2",
                 "--set", f"data.dir={mnist_root}", "--set", "data.download=false", "--set", "data.train_limit=500",
                 "--set", "data.val_size=200", "--early-stopping", "patience:5",
                 "--set", "early_stopping.monitor=epoch", "--set", "early_stopping.mode=min", "--no-report",
                 "--out", str(run), *common]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--set", "early_stopping.restore_best_weights=true",
                 *common]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["restored_by_early_stopping"] is False
    assert read_run(run).early_stopping.restored is False
    text = caption(write_report(run).path.read_text())  # (train.report = false is kept by the resume)
    assert "It judged best epoch 1" in text and "restored" not in text



def test_the_summary_table_shows_null_and_true_as_summary_json_has_them(copy_run):
    # The table is "summary.json as the run wrote it", yet showed Python's None and True for its null and true.
    run = copy_run()
    summary = json.loads((run / "summary.json").read_text())
    summary["use_checkpoint"] = None  # as a run that diverged in its first epoch writes it
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report(run).path.read_text()
    assert "<th>restored_by_early_stopping</th><td>true</td>" in page
    assert "<th>use_checkpoint</th><td>null</td>" in page
    assert "<td>None</td>" not in page and "<td>True</td>" not in page
