"""Mutation audit 158 of what `mnistlab train` prints (display.py), the commands' --json (jsonout.py) and
`mnistlab ensemble` (ensemble.py): each test kills a small change of the code that the other tests let live,
checked against numbers worked out by hand."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import pytest

from mnistlab.training import display as display_module
from mnistlab.training.display import Display

METRICS = {"epoch": 3, "train_loss": 0.31, "train_accuracy": 0.91, "val_loss": 0.22, "val_accuracy": 0.94,
           "lr": 1e-3, "seconds": 3.2}


# ---- the epoch table and the progress bar -------------------------------------------------------------------


def test_the_epoch_row_shows_each_metric_in_its_column_in_percent_and_with_the_average_before_lr():
    out = io.StringIO()
    Display(out=out).epoch_row({**METRICS, "ema_val_accuracy": 0.95})
    header, row = out.getvalue().splitlines()
    # Written out by hand from the column formats: epoch 5 wide, train_loss 10, train_acc 9 (8 and "%"),
    # val_loss 9, val_acc 8, ema_val_acc 11, lr 9, seconds 7; two spaces between columns.
    assert header == "epoch  train_loss  train_acc   val_loss   val_acc  ema_val_acc         lr  seconds"
    assert row == "    3      0.3100     91.00%     0.2200    94.00%       95.00%   1.00e-03      3.2"


def test_without_any_output_stream_the_display_prints_nothing_and_does_not_fail(monkeypatch):
    # sys.stdout is None under pythonw and some service hosts: the run goes on without its table.
    monkeypatch.setattr(sys, "stdout", None)
    d = Display()
    assert d.quiet and not d.bar
    d.log("a message")
    d.epoch_row(METRICS)
    d.progress(1, 2, 3, 4, 0.5, 0.5)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_last_batch_is_drawn_even_right_after_the_previous_draw(monkeypatch):
    # Redraws are at most every 0.1 s, but the epoch's last batch always shows: the bar ends full at 20/20.
    monkeypatch.setattr(display_module, "_room", lambda: 100)
    monkeypatch.setattr(display_module, "time", types.SimpleNamespace(monotonic=lambda: 50.0))
    term = _Terminal()
    d = Display(out=term)
    d.progress(1, 1, 19, 20, 0.5, 0.5)
    d.progress(1, 1, 20, 20, 0.25, 0.75)  # the same instant
    last = term.getvalue().split("\r")[-1]
    assert last.startswith("epoch 1/1 [" + "#" * 30 + "] 20/20  loss 0.2500  acc 75.00%"), last


def test_the_bar_of_an_evaluation_ends_full_even_right_after_the_previous_draw(monkeypatch):
    monkeypatch.setattr(display_module, "_room", lambda: 100)
    monkeypatch.setattr(display_module, "time", types.SimpleNamespace(monotonic=lambda: 50.0))
    term = _Terminal()
    d = Display(out=term)
    d.evaluating("testing best.ckpt", 4500, 5000)
    d.evaluating("testing best.ckpt", 5000, 5000)  # the same instant
    assert term.getvalue().split("\r")[-1] == "testing best.ckpt [" + "#" * 30 + "] 5,000/5,000"


def test_a_display_given_an_epoch_again_from_its_start_measures_the_time_left_anew(monkeypatch):
    # A Display passed to a second fit (a notebook training again) sees epoch 1 restart at batch 1: the time
    # left and the rate are measured from there, not from the first run's batches.
    clock = types.SimpleNamespace(now=100.0)
    clock.monotonic = lambda: clock.now
    monkeypatch.setattr(display_module, "_room", lambda: 120)
    monkeypatch.setattr(display_module, "time", clock)
    term = _Terminal()
    d = Display(out=term)
    d.progress(1, 2, 10, 20, 0.5, 0.5, images=1000.0)
    clock.now = 110.0
    d.progress(1, 2, 20, 20, 0.5, 0.5, images=2000.0)
    clock.now = 500.0  # the second run
    d.progress(1, 2, 1, 20, 0.5, 0.5, images=100.0)
    clock.now = 502.0  # 2 batches of 100 in 2 s, 17 batches to go
    d.progress(1, 2, 3, 20, 0.5, 0.5, images=300.0)
    assert term.getvalue().split("\r")[-1].rstrip().endswith("  100 img/s  ETA 0:17")


def test_on_a_narrower_terminal_the_rate_goes_before_the_time_left():
    line = display_module.progress_line(2, 5, 50, 100, 0.25, 0.9, 70, rate=3120.5, eta=75)
    # 70 columns: no room for the whole tail (56 characters) beside a bar of 10; without the rate (43) the bar
    # gets 70 - 9 - 43 - 3 = 15 characters, 7 of them filled (half of 15, rounded down).
    assert line == "epoch 2/5 [#######........]  50/100  loss 0.2500  acc 90.00%  ETA 1:15"


def test_a_warning_printer_set_during_the_run_is_left_in_place_after_it(monkeypatch):
    # A callback or notebook that installs its own warnings.showwarning mid-run keeps it: the run puts back the
    # printer it replaced only if its own is still the one installed.
    import warnings

    def before(*args, **kwargs):
        pass

    def theirs(*args, **kwargs):
        pass

    monkeypatch.setattr(warnings, "showwarning", before)
    with display_module.progress_safe_warnings():
        assert warnings.showwarning is not before  # the run's own, which blanks the bar first
        warnings.showwarning = theirs
    assert warnings.showwarning is theirs
    with display_module.progress_safe_warnings():
        pass
    assert warnings.showwarning is theirs


# ---- --json ------------------------------------------------------------------------------------------------


def test_json_writes_a_non_finite_number_inside_a_tuple_as_null():
    from mnistlab import jsonout

    text = jsonout.dumps({"range": (1e-3, float("inf")), "loss": [(float("nan"), 2.5)]})
    assert text == '{"range": [0.001, null], "loss": [[null, 2.5]]}'
    assert json.loads(text) == {"range": [0.001, None], "loss": [[None, 2.5]]}


# ---- mnistlab ensemble's table ------------------------------------------------------------------------------


def test_the_ensemble_table_keeps_its_accuracies_in_one_column_when_the_paths_are_short():
    # `mnistlab ensemble a b` reads a/best.ckpt and b/best.ckpt: 11 characters, fewer than "ensemble of 2", whose
    # accuracy then stood two columns right of the others.
    from mnistlab.training.ensemble import EnsembleResult, Member, format_ensemble

    result = EnsembleResult([Member(Path("a/best.ckpt"), 0.97), Member(Path("b/best.ckpt"), 0.9612)], 0.98, 0.07,
                            "mnist", 10_000)
    assert format_ensemble(result).splitlines() == [
        "member         test accuracy",
        "-------------  -------------",
        "a/best.ckpt           97.00%",
        "b/best.ckpt           96.12%",
        "ensemble of 2         98.00%",
    ]


@pytest.fixture(scope="module")
def two_members(one_step_run, tmp_path_factory) -> list[Path]:
    """one_step_run's model and another: its weights moved by seeded noise (another digest, another model)."""
    import torch

    from mnistlab.training.checkpoint import read_checkpoint, save_checkpoint

    payload = read_checkpoint(one_step_run / "best.ckpt")
    g = torch.Generator().manual_seed(158)
    payload["model"] = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                        for k, v in payload["model"].items()}
    other = save_checkpoint(tmp_path_factory.mktemp("member") / "other.ckpt", payload)
    return [one_step_run / "best.ckpt", other]


def test_the_ensemble_with_tta_averages_its_members_tta_probabilities_and_json_has_its_loss(two_members,
                                                                                           monkeypatch):
    import dataclasses

    import mnistlab.data
    from mnistlab.training.checkpoint import model_from_checkpoint, read_checkpoint
    from mnistlab.training.ensemble import evaluate_ensemble
    from mnistlab.training.evaluate import evaluate

    real = mnistlab.data.load_test
    first = []

    def first_1000(*args, **kwargs):  # 1,000 test images keep the five views of each member quick
        ts = real(*args, **kwargs)
        first.append(dataclasses.replace(ts, test=type(ts.test)(ts.test.images[:1000], ts.test.labels[:1000])))
        return first[-1]

    monkeypatch.setattr(mnistlab.data, "load_test", first_1000)
    result = evaluate_ensemble(two_members, tta_shift=1)
    test = first[0].test
    evs = [evaluate(model_from_checkpoint(read_checkpoint(p)), test, tta_shift=1) for p in two_members]
    plain = evaluate(model_from_checkpoint(read_checkpoint(two_members[0])), test)
    assert plain.loss != pytest.approx(evs[0].loss, rel=1e-4)  # the TTA changes the outputs measured here
    mean = (evs[0].probabilities.double() + evs[1].probabilities.double()) / 2
    accuracy = float((mean.argmax(1) == test.labels).double().mean())
    p = (evs[0].log_probabilities.double().exp() + evs[1].log_probabilities.double().exp()) / 2
    loss = float(-p.gather(1, test.labels.view(-1, 1)).log().mean())  # cross-entropy of the average, no smoothing
    assert [m.accuracy for m in result.members] == [ev.accuracy for ev in evs]
    assert result.accuracy == pytest.approx(accuracy, abs=1e-12) and result.loss == pytest.approx(loss, rel=1e-6)
    d = result.to_dict()
    assert d["tta_shift"] == 1 and d["examples"] == 1000 and d["dataset"] == "mnist"
    assert d["ensemble"] == {"size": 2, "test_accuracy": result.accuracy, "test_loss": result.loss}


def test_the_ensemble_reads_its_test_images_from_the_data_folder_given(two_members, mnist_root, tmp_path, monkeypatch):
    # `mnistlab ensemble --data-dir moved`: the data has moved since training; the members' stored folder is not it.
    import dataclasses

    import mnistlab.data
    from mnistlab.training.ensemble import evaluate_ensemble

    (tmp_path / "moved" / "MNIST").mkdir(parents=True)
    (tmp_path / "moved" / "MNIST" / "raw").symlink_to(Path(mnist_root) / "MNIST" / "raw")
    real, read_from = mnistlab.data.load_test, []

    def first_100(cfg, *args, **kwargs):
        read_from.append(Path(cfg.dir))
        ts = real(cfg, *args, **kwargs)
        return dataclasses.replace(ts, test=type(ts.test)(ts.test.images[:100], ts.test.labels[:100]))

    monkeypatch.setattr(mnistlab.data, "load_test", first_100)
    assert evaluate_ensemble(two_members, data_dir=str(tmp_path / "moved")).examples == 100
    assert read_from == [tmp_path / "moved"]
