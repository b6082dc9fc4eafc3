"""Folders a command makes and takes back: a command that fails leaves no empty folder behind.

>>> [str(p) for p in missing_folders(Path("/nonexistent-mnistlab/a/b"))]   # the deepest first
['/nonexistent-mnistlab/a/b', '/nonexistent-mnistlab/a', '/nonexistent-mnistlab']
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, the deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: Iterable[Path]) -> None:
    """Remove ``folders`` (the deepest first, as :func:`missing_folders` lists them) while they are empty.

    Stops at the first that cannot go: a folder that now holds a file (a partial download, a
    lock file) keeps it and its parents.
    """
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break
