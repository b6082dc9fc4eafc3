"""Folders a command makes and takes back: a command that fails leaves no empty folder behind.

>>> [str(p) for p in missing_folders(Path("/nonexistent-mnistlab/a/b"))]   # the deepest first
['/nonexistent-mnistlab/a/b', '/nonexistent-mnistlab/a', '/nonexistent-mnistlab']
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Iterable

# Where Path.home() and expanduser fail (RuntimeError): a container or service run under a user id with no entry
# in the user database, and no $HOME
NO_HOME = "this user has no home folder ($HOME is not set, and the user database has none for this user)"


def expand_home(path: Path, what: str, error: type[Exception]) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded (a shell expands one only at the start of a word:
    ``--config=~/x.toml`` arrives with it), or ``error`` saying why it cannot be, naming the setting ``what``."""
    try:
        return path.expanduser()
    except RuntimeError:
        user = path.parts[0][1:]  # "~name/...": that user's home, which fails the same way for an unknown name
        why = f"this machine has no user {user!r}" if user else NO_HOME
        raise error(f"{what} {path} starts with {path.parts[0]}, but {why}; give it as a full path") from None


def shell_path(path: str | Path) -> str:
    """``path`` as one shell word for a command a message tells the user to run (the argument, not a flag).

    >>> shell_path("my runs/a"), shell_path("-x")
    ("'my runs/a'", './-x')
    """
    text = str(path)
    if text.startswith("-"):  # `--resume -x` reads as a flag, not the folder -x
        text = f"./{text}"
    return shlex.quote(text)


def missing_folders(folder: Path) -> list[Path]:
    """The folders that ``folder.mkdir(parents=True)`` would make, the deepest first.

    >>> [str(p) for p in missing_folders(Path("/nonexistent-mnistlab/new/../run"))]
    ['/nonexistent-mnistlab/run', '/nonexistent-mnistlab/new', '/nonexistent-mnistlab']
    """
    # Walked from the top, not up through folder.parents: in "new/../run", "new/.." is no folder to make (mkdir
    # makes new/ to reach it), so remove_empty stopped there and left new/ behind. The ".." of a folder made here
    # (no link) is its lexical parent; that of one that exists is left to the kernel (it may be a link).
    path, made = Path(folder.anchor), []
    for part in folder.parts[1 if folder.anchor else 0:]:
        if part == "..":
            path = path.parent if path in made else path / ".."
            continue
        path = path / part
        if path.parent in made or not path.exists():
            made.append(path)
    return made[::-1]


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


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` are one file or folder (through links, and hard links); one that does not exist
    is not the other."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def probe_write(folder: Path) -> None:
    """Write and remove a 4 KiB file in ``folder``; raises the OSError if that fails (no write access,
    a full disk, a file system that takes no new files such as /proc). The probe never stays behind."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"x" * 4096)
    finally:
        probe.unlink(missing_ok=True)
