"""Names a sweep is given: the study's, in the default folder (one folder under sweeps/ whatever it is), and a
--set of a [sweep] key."""

from pathlib import Path

from mnistlab.sweep.runner import default_out


def test_a_study_name_with_a_slash_is_one_folder_not_a_folder_in_a_folder():
    out = default_out("lr/wd")
    assert out.parent == Path("sweeps") and out.name.endswith("-lr-wd")  # was sweeps/<stamp>-lr/wd


def test_a_long_study_name_still_makes_a_name_a_folder_can_have():
    out = default_out("é" * 300)  # 600 bytes in UTF-8
    assert len(out.name.encode()) <= 255 and out.name.endswith("é")  # not cut inside a character
    assert out.parent == Path("sweeps")


def test_a_set_of_a_sweep_key_points_at_the_flags_and_the_file():
    import pytest

    from mnistlab.errors import ConfigError
    from mnistlab.sweep import sweep_from_dict

    # it was "unknown section 'sweep' in override 'sweep.trials'; valid sections: model, data, ..."
    with pytest.raises(ConfigError, match=r"--set sweep.trials: --set changes the base config, not \[sweep\]; give "
                                          r"--trials, --workers or --storage"):
        sweep_from_dict({"sweep": {"params": {"optimizer.lr": [0.1, 0.01]}}}, overrides=["sweep.trials=3"])
