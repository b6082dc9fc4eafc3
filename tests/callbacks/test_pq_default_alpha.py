"""`--early-stopping pq` without a number is Prechelt's PQ_0.5, as PQ() is; GL keeps 5. One shared default of 5
made it PQ_5, outside the thresholds Prechelt tried (0.5 to 3) and ten times the class's. And PQ with a 1-epoch
strip, whose training progress is always 0, is said to stop at any rise."""

from dataclasses import replace

from mnistlab.callbacks import PQ, early_stopping_from_config, parse_early_stopping
from mnistlab.callbacks.early_stopping import early_stopping_warnings
from mnistlab.config import Config, apply_overrides, config_to_toml, load_config


def _rule(overrides):
    return early_stopping_from_config(apply_overrides(Config(), overrides).early_stopping)


def test_pq_unset_is_pq_one_half_as_the_class_and_gl_is_five():
    pq = _rule(parse_early_stopping("pq"))  # `--early-stopping pq`
    assert isinstance(pq, PQ) and pq.alpha == PQ().alpha == 0.5
    assert _rule(["early_stopping.criterion=gl"]).alpha == 5.0
    # a number given, or alpha set in the config, is taken as before
    assert _rule(parse_early_stopping("pq:2")).alpha == 2.0
    assert _rule(["early_stopping.criterion=pq", "early_stopping.alpha=5"]).alpha == 5.0


def test_the_warning_names_the_threshold_that_acts():
    cfg = apply_overrides(Config(), ["early_stopping.criterion=pq"]).early_stopping
    assert early_stopping_warnings(cfg, epochs=3) == [
        "PQ_0.5 cannot stop a run of 3 epochs: it decides at the ends of 5-epoch strips, so its first possible stop "
        "is after epoch 5"]


def test_a_run_folders_config_keeps_an_unset_alpha_unset(tmp_path):
    # so that a run resumed with --early-stopping gl after pq takes GL's own 5, not PQ's 0.5
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(apply_overrides(Config(), ["early_stopping.criterion=pq"])))
    assert load_config(path).early_stopping.alpha is None


def test_pq_with_a_one_epoch_strip_says_it_stops_at_any_rise():
    cfg = apply_overrides(Config(), ["early_stopping.criterion=pq", "early_stopping.strip=1"]).early_stopping
    assert early_stopping_warnings(cfg, epochs=10) == [
        "PQ_0.5 with early_stopping.strip = 1 stops at the first epoch whose validation error is above its best "
        "(GL > 0): the training progress over a 1-epoch strip is always 0; Prechelt's strip is 5"]
    pq = PQ(strip=1)
    pq.e_tr = {1: 0.5, 2: 0.4}
    assert pq.training_progress(2) == 0.0  # what the warning says
    assert early_stopping_warnings(replace(cfg, strip=2), epochs=10) == []
