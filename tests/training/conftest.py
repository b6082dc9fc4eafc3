"""In-process runs here skip report.html: its plots cost seconds a run (4 s on a slow CPU) and
``tests/report`` tests the report, also after a real run. Subprocess runs (test_distributed.py)
still write it.
"""

from __future__ import annotations

import types

import pytest


@pytest.fixture(autouse=True)
def _no_report(monkeypatch):
    import mnistlab.report

    monkeypatch.setattr(mnistlab.report, "write_run_report", lambda *a, **k: types.SimpleNamespace(path="(skipped)"))
