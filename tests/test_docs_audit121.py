"""Checks that keep claims of README.md and of `mnistlab <command> --help` true to the code.

No training: they read the README, the config's defaults, the presets and the argparse parsers.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from mnistlab.config import Config, config_to_dict

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_key_of_the_default_config_is_documented_in_the_readme():
    # README's Configuration section names every section's keys (the callbacks' ones in the Callbacks table);
    # a key added to config.py without a word in the README fails here.
    # (the Callbacks table lists some as plain words: "monitor, mode, factor, patience, threshold").
    start, end = README.index("## Configuration"), README.index("## Choosing a learning rate")
    documented = README[start:end]
    missing = [f"{section}.{key}" for section, keys in config_to_dict(Config()).items() for key in keys
               if not re.search(rf"(?<![\w.]){key}(?!\w)", documented) and f"{section}.{key}" not in README]
    assert not missing, f"config keys the README never names: {', '.join(missing)}"


def test_every_config_section_is_documented_in_the_readme():
    missing = [section for section in config_to_dict(Config()) if f"`[{section}]`" not in README]
    assert not missing, f"config sections the README never names: {', '.join(missing)}"


def test_configs_has_a_preset_for_every_model():
    # README, Configuration: "`configs/` has a preset for every model."
    from mnistlab.models import list_models
    from mnistlab.sweep.spec import tomllib  # tomli on Python 3.10

    named = set()
    for path in (ROOT / "configs").glob("*.toml"):
        named.add(tomllib.loads(path.read_text(encoding="utf-8")).get("model", {}).get("name"))
    assert set(list_models()) <= named, f"models without a preset: {sorted(set(list_models()) - named)}"


def test_documented_callback_defaults_are_the_configs():
    # The defaults README's Callbacks section states, as [early_stopping], [checkpoint] and [tensorboard] hold them.
    cfg = Config()
    es, tb, ck = cfg.early_stopping, cfg.tensorboard, cfg.checkpoint
    from mnistlab.callbacks.early_stopping import alpha_of

    assert (es.strip, es.strips, es.error) == (5, 3, "loss")  # "strip ... default 5", "UP's s, default 3"
    # "unset, 5 for GL and 0.5 for PQ"
    assert [alpha_of(replace(es, criterion=c)) for c in ("gl", "pq")] == [5.0, 0.5] and es.alpha is None
    assert "unset, 5 for GL and 0.5 for PQ" in README
    assert es.stop_on_nonfinite is True and es.divergence_threshold is None
    assert (tb.log_every_n_steps, tb.histogram_every_n_epochs, tb.graph, tb.images) == (50, 1, True, True)
    assert ck.save_top_k == 1 and ck.monitor == "val_accuracy"  # "1 by default", "validation accuracy unless set"
    assert ck.filename == "epoch{epoch:03d}-{val_accuracy:.4f}.ckpt"
    assert "`epoch{epoch:03d}-{val_accuracy:.4f}.ckpt`" in README


def _subcommand_actions():
    from mnistlab.cli import _parser

    for name, sub in _parser().commands.items():
        for action in sub._actions:
            if action.help and action.help != "==SUPPRESS==":
                yield name, action


@pytest.mark.parametrize("name,action", [pytest.param(n, a, id=f"{n} {a.dest}") for n, a in _subcommand_actions()
                                         if a.default is not None  # None: resolved later (sweep --workers)
                                         and re.search(r"\(default:? [\w.\-]+(?: \w+)?[;:),]", a.help or "")])
def test_help_states_the_parsers_default(name, action):
    # `(default 1e-7)`, `(default: cnn fast)`: the value --help promises is the one argparse fills in.
    stated = re.search(r"\(default:? ([\w.\-]+(?: \w+)?)[;:),]", action.help).group(1)
    default = action.default
    if isinstance(default, list):
        assert stated.split() == default, (name, action.dest, stated, default)
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
        assert float(stated.split()[0]) == default, (name, action.dest, stated, default)
    else:
        assert stated.split()[0] == str(default), (name, action.dest, stated, default)
