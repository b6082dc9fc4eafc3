"""In-process runs here skip report.html (``tests/report`` tests it, also after a real run).

Subprocess runs (test_distributed.py) still write it.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_report(no_report):
    """The shared ``no_report`` fixture (tests/conftest.py), for every test here."""
