"""Sweep audit 118: the table of a sweep that stops on failures, keys whose values a sweep cannot rank (label
smoothing under a loss objective, test-time augmentation), and a stepped range too fine to count.
Driven with ``fake_train`` (see conftest.py) or by reading the file only."""

from __future__ import annotations

import csv

import pytest

from sweep_helpers import import_optuna

optuna = import_optuna()  # skipped without Optuna, but a failure under CI=true (see sweep_helpers)

from mnistlab.config import load_config  # noqa: E402
from mnistlab.errors import ConfigError, MnistlabError  # noqa: E402
from mnistlab.sweep import load_sweep, run_sweep, sweep_from_dict  # noqa: E402


def spec(params, epochs=2, base=None, **sweep):
    return sweep_from_dict({"train": {"epochs": epochs}, **(base or {}), "sweep": {**sweep, "params": params}})


def test_a_sweep_stopped_by_failures_in_a_row_still_writes_the_table_of_its_finished_trials(
        fake_train, tmp_path, monkeypatch):
    # The first grid point trains; the next three fail, which stops the sweep. The finished trial was left in
    # study.db only: no results.csv, objective.png or best.toml.
    import mnistlab.training.run as run

    fake = run.train

    def train(cfg, **kw):
        if cfg.optimizer.lr > 0.002:
            raise RuntimeError("boom")
        return fake(cfg, **kw)

    monkeypatch.setattr(run, "train", train)
    with pytest.raises(MnistlabError, match="3 trials in a row failed; the last error: RuntimeError: boom"):
        run_sweep(spec({"optimizer.lr": [0.001, 0.003, 0.004, 0.005, 0.006]}, sampler="grid"), out=tmp_path,
                  quiet=True)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "FAIL"), ("2", "FAIL"), ("3", "FAIL")]
    assert rows[1]["note"] == "RuntimeError: boom"
    assert load_config(tmp_path / "best.toml").optimizer.lr == 0.001
    assert (tmp_path / "objective.png").stat().st_size > 0


@pytest.mark.parametrize("objective", ["val_loss", "ema_val_loss"])
def test_label_smoothing_swept_under_a_loss_objective_is_refused(objective):
    # val_loss is measured on the smoothed labels: 0.1 can never score below ~0.5, 0 can reach 0, so the sweep
    # ranked the smoothing values by the smoothing itself and always "found" the lowest.
    params = {"train.label_smoothing": [0.0, 0.1]}
    with pytest.raises(ConfigError, match=r'"train.label_smoothing" changes what ' + objective + r" measures .* "
                       r'sweep.objective = "val_accuracy" or "val_error"'):
        spec(params, objective=objective, base={"ema": {"enabled": True}})
    assert spec(params, objective="val_accuracy").params[0].key == "train.label_smoothing"  # accuracy compares
    assert spec({"optimizer.lr": [0.01, 0.1]}, objective="val_loss",  # a fixed smoothing is the same for all
                base={"train": {"epochs": 2, "label_smoothing": 0.1}}).objective == "val_loss"


@pytest.mark.parametrize("key, values", [("tta.enabled", [False, True]), ("tta.shift", [1, 2])])
def test_test_time_augmentation_cannot_be_swept(key, values):
    # TTA acts on the final test only; trials are ranked on the validation split, so every value trained the
    # same model to the same objective and the "best" one was the first drawn.
    with pytest.raises(ConfigError, match=rf'sweep.params."{key}" cannot be searched: it acts on the final test '
                       "only"):
        spec({key: values}, base={"tta": {"enabled": True}})


def test_a_step_too_fine_to_count_is_one_clear_error():
    # It was a decimal.InvalidOperation traceback ([<class 'decimal.DivisionImpossible'>]).
    with pytest.raises(ConfigError, match=r'sweep.params."optimizer.lr": the range 0.001 to 0.01 in steps of '
                       r"1e-300 holds more than 10\*\*28 values"):
        spec({"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.01, "step": 1e-300}})
    assert spec({"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.01, "step": 0.001}}).trials == 10


def test_a_set_of_a_searched_key_is_refused_not_silently_replaced(tmp_path):
    # `mnistlab sweep s.toml --set optimizer.lr=0.5` trained every listed lr but 0.5, and said nothing.
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\n[sweep.params]\n"optimizer.lr" = [0.01, 0.1]\n')
    with pytest.raises(ConfigError, match=r'--set optimizer.lr sets a key that \[sweep.params\] searches, so each '
                       r'trial would replace its value; leave the --set out, or take "optimizer.lr" out of'):
        load_sweep(path, overrides=["train.epochs=1", " optimizer.lr = 0.5"])
    assert load_sweep(path, overrides=["optimizer.momentum=0.5"]).base.optimizer.momentum == 0.5  # not searched


def test_one_label_smoothing_for_every_trial_compares_under_a_loss_objective():
    assert spec({"train.label_smoothing": [0.1], "optimizer.lr": [0.01, 0.1]}, objective="val_loss").trials == 2
    with pytest.raises(ConfigError, match="changes what val_loss measures"):
        spec({"train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2}}, objective="val_loss")


def test_workers_without_a_sweep_file_are_refused_before_the_folder_is_made(tmp_path, monkeypatch):
    # The Python API's spec has no file to start workers on: refused only after the folder and a study.db
    # holding the sweep's fingerprint were made.
    monkeypatch.setattr("mnistlab.machine.usable_cores", lambda: 4)  # two workers pass on a one-core CI machine
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match="sweep workers start from the sweep file"):
        run_sweep(spec({"optimizer.lr": [0.01, 0.1]}, workers=2), out=out, quiet=True)
    assert not out.exists()
