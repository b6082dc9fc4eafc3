import pytest

from fake_trainer import FakeTrainer


@pytest.fixture
def trainer(tmp_path) -> FakeTrainer:
    """A fake trainer whose run folder is the test's tmp_path."""
    return FakeTrainer(run_dir=tmp_path)
