"""training_rate and roofline set the model, the batch size and the epochs of their runs themselves: overrides of
those are refused (they replaced them: a row labelled batch 256 trained at 64, and epochs=1 timed the warm-up)."""

import pytest

from mnistlab.bench import roofline, training_rate
from mnistlab.errors import ConfigError


@pytest.mark.parametrize("override", ["train.batch_size=64", "train.epochs=1", "model.name=lenet"])
def test_an_override_of_the_runs_own_settings_is_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"overrides: {key} is set by the training-rate run itself"):
        training_rate("cnn", batch_size=8, steps=2, overrides=[override])
    with pytest.raises(ConfigError, match=f"overrides: {key} is set by the training-rate run itself"):
        roofline(["cnn"], batch_size=8, steps=2, overrides=[override])


def test_other_overrides_still_act():
    assert training_rate("cnn", batch_size=8, steps=2, overrides=["model.width=0.25"]) > 0
