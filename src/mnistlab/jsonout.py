"""JSON that every parser reads: a number that is not finite (NaN, inf) is written as null.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which strict parsers
(``jq``, JavaScript's ``JSON.parse``) refuse. A diverged run's test loss or a range
test's last loss can be such a number; null says "no value" in every reader.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float inside dicts, lists and tuples replaced by None.

    >>> finite_or_none({"loss": float("nan"), "lrs": [1e-3, float("inf")], "n": 3})
    {'loss': None, 'lrs': [0.001, None], 'n': 3}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_or_none` (``obj``); never writes NaN or Infinity."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
