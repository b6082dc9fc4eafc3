"""The default sweep folder is one folder under sweeps/ whatever the study is called."""

from pathlib import Path

from mnistlab.sweep.runner import default_out


def test_a_study_name_with_a_slash_is_one_folder_not_a_folder_in_a_folder():
    out = default_out("lr/wd")
    assert out.parent == Path("sweeps") and out.name.endswith("-lr-wd")  # was sweeps/<stamp>-lr/wd


def test_a_long_study_name_still_makes_a_name_a_folder_can_have():
    out = default_out("é" * 300)  # 600 bytes in UTF-8
    assert len(out.name.encode()) <= 255 and out.name.endswith("é")  # not cut inside a character
    assert out.parent == Path("sweeps")
