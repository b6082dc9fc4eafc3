"""The sweep tests' guard for a missing Optuna: a skip with the install command, but a failure on CI."""

import sys

import pytest

from sweep_helpers import import_optuna


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_a_missing_optuna_skips_the_sweep_tests_except_on_ci(monkeypatch, ci, outcome):
    # pytest.importorskip skipped them under CI=true too: a CI job without the tune extra looked green.
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    # Caught as any BaseException (pytest's skip and fail are ones), so that a skip where a failure is due
    # fails this test instead of skipping it.
    with pytest.raises(BaseException) as caught:
        import_optuna()
    assert caught.type is outcome
    assert "the sweep tests need the tune extra" in str(caught.value)
    assert "pip install -e '.[tune]'" in str(caught.value)
