"""Sweep edge cases a user meets: a seed at the samplers' limit, an in-memory storage, a refusal that says what
changed, and "none" listed for an optional key. Driven with ``fake_train`` (see conftest.py)."""

from __future__ import annotations

import csv

import pytest

from sweep_helpers import import_optuna

optuna = import_optuna()  # skipped without Optuna, but a failure under CI=true (see sweep_helpers)

from mnistlab.config import load_config  # noqa: E402
from mnistlab.errors import ConfigError  # noqa: E402
from mnistlab.sweep import load_sweep, run_sweep, sweep_from_dict  # noqa: E402


def spec(params, epochs=2, base=None, **sweep):
    return sweep_from_dict({"train": {"epochs": epochs}, **(base or {}), "sweep": {**sweep, "params": params}})


LR = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


def test_a_seed_at_the_samplers_limit_continues_and_one_beyond_it_is_refused(fake_train, tmp_path):
    # Each rerun and each worker adds to the seed: at 2**32 - 1 the first run went, and the rerun that was to
    # continue it died in NumPy ("Seed must be between 0 and 2**32 - 1") with a traceback.
    top = 2**32 - 1
    run_sweep(spec(LR, sampler="random", trials=1, seed=top), out=tmp_path, quiet=True)
    result = run_sweep(spec(LR, sampler="random", trials=2, seed=top), out=tmp_path, quiet=True)
    assert len(fake_train) == 2 and sorted(r.number for r in result.rows) == [0, 1]
    with pytest.raises(ConfigError, match=r"sweep.seed must be below 2\*\*32 = 4294967296 .* got 4294967296"):
        spec(LR, seed=2**32)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:db?mode=memory&uri=true"])
def test_an_in_memory_storage_is_refused(url):
    # Each worker held a study of its own and ran the whole count into the same trial folders; the study was
    # gone at the end, and the rerun was refused as "another sweep" in its own folder.
    with pytest.raises(ConfigError, match=r"is an in-memory database, which ends with the process"):
        spec(LR, storage=url)


def test_an_in_memory_storage_from_the_command_line_is_named_as_given(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\n[sweep.params]\n"optimizer.lr" = [0.01, 0.1]\n')
    with pytest.raises(ConfigError, match=r"--storage sqlite:// is an in-memory database"):
        load_sweep(path, storage="sqlite://")
    load_sweep(path, storage="sqlite:///study.db")  # a file is fine


def test_a_changed_sweep_is_refused_naming_each_key_that_changed(fake_train, tmp_path):
    params = {"optimizer.lr": [0.001, 0.01]}
    run_sweep(spec(params, sampler="grid", trials=1), out=tmp_path, quiet=True)
    with pytest.raises(ConfigError) as err:  # it said "it differs in: base", and the user had to diff the files
        run_sweep(spec(params, epochs=3, base={"optimizer": {"name": "sgd"}}, sampler="grid"), out=tmp_path,
                  quiet=True)
    assert "(it differs in: base): optimizer.name = \"sgd\" (the study's: \"adam\"); train.epochs = 3 " \
           "(the study's: 2); trials of different searches" in str(err.value)
    with pytest.raises(ConfigError) as err:
        run_sweep(spec({"optimizer.lr": [0.001, 0.02]}, sampler="random"), out=tmp_path, quiet=True)
    assert ('sweep.params."optimizer.lr" = [0.001, 0.02] (the study\'s: [0.001, 0.01]); '
            'sweep.sampler = "random" (the study\'s: "grid")') in str(err.value)
    with pytest.raises(ConfigError, match=r'sweep.params."train.seed" = \{type = "int", low = 0, high = 64\} '
                                          r"\(the study's: not searched\)"):
        run_sweep(spec({**params, "train.seed": {"type": "int", "low": 0, "high": 64}}, sampler="random"),
                  out=tmp_path, quiet=True)


def test_params_listed_in_another_order_are_the_same_sweep(fake_train, tmp_path):
    # The order of the lines in [sweep.params] changes no trial; it was refused as "another search".
    lr, bs = {"optimizer.lr": [0.001, 0.01]}, {"train.batch_size": [32, 64]}
    run_sweep(spec({**lr, **bs}, sampler="grid", trials=2), out=tmp_path, quiet=True)
    result = run_sweep(spec({**bs, **lr}, sampler="grid"), out=tmp_path, quiet=True)
    assert len(fake_train) == 4 and len(result.rows) == 4
    assert {(c.optimizer.lr, c.train.batch_size) for c in fake_train} == {(a, b) for a in (0.001, 0.01)
                                                                           for b in (32, 64)}


@pytest.mark.parametrize("sampler", ["grid", "random"])
def test_none_in_a_list_of_values_unsets_an_optional_key(fake_train, tmp_path, sampler):
    # TOML has no null: "none" is how a file lists "off" beside a value, as --set key=none says it. It was
    # refused: "train.grad_clip = 'none' has the wrong type; expected float | None".
    result = run_sweep(spec({"train.grad_clip": ["none", 1.0]}, sampler=sampler), out=tmp_path, quiet=True)
    assert sorted((c.train.grad_clip for c in fake_train), key=str) == [1.0, None]
    with open(tmp_path / "results.csv", newline="") as f:
        assert sorted(row["train.grad_clip"] for row in csv.DictReader(f)) == ["1.0", "none"]
    best = result.rows[0]
    assert load_config(tmp_path / "best.toml").train.grad_clip == best.params["train.grad_clip"]


def test_none_stays_a_word_for_a_key_that_has_it_as_a_choice():
    s = spec({"early_stopping.criterion": ["none", "gl"]}, sampler="grid")
    assert s.params[0].choices == ("none", "gl")
    with pytest.raises(ConfigError, match=r"train.epochs = 'none' has the wrong type; expected int"):
        spec({"train.epochs": ["none", 2]})  # not an optional key: the config's own message
    with pytest.raises(ConfigError, match=r"choices repeat a value: \['none', 'null'\]"):
        spec({"train.grad_clip": ["none", "null"]})
