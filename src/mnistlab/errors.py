"""The project's own error types.

Every problem caused by the user's input (a config, a data file, a checkpoint)
is raised as a subclass of :class:`MnistlabError` with a message that says what
was wrong, what was expected and how to fix it. The CLI prints these messages
without a traceback; anything else is a bug in mnistlab. In the processes of a
multi-process run (``train --nproc``) the message goes to the launcher instead,
which prints it once (:func:`leave_error`).
"""

import os

# Set by `mnistlab train --nproc` (training/distributed.py's launch) for the processes it starts: the file
# where one of them leaves its error line for the launcher, which prints it once.
ERROR_FILE = "MNISTLAB_ERROR_FILE"


def leave_error(message: str) -> bool:
    """In a process that ``mnistlab train --nproc`` started, leave ``message`` (a MnistlabError's text) for
    the launcher, which prints it once and exits 2; False (nothing done) in any other process. The first
    error wins: every process may find the same bad setting."""
    path = os.environ.get(ERROR_FILE)
    if not path or "RANK" not in os.environ:  # RANK: torchrun's process, not one of our own children
        return False
    try:
        with open(path, "x") as f:
            f.write(message)
    except FileExistsError:
        pass
    except OSError:
        return False
    return True


class MnistlabError(Exception):
    """Base class for every error mnistlab raises on bad input."""


class ConfigError(MnistlabError, ValueError):
    """A config value, key, override or model option is invalid."""


class DataError(MnistlabError):
    """A dataset file is missing, corrupted or inconsistent."""


class CheckpointError(MnistlabError):
    """A checkpoint cannot be read, is corrupted, or does not fit."""


class RunDirError(MnistlabError):
    """The run folder cannot be used (in use by another run, not writable)."""


class Signalled(KeyboardInterrupt):
    """Not an error: SIGTERM (or SIGHUP) raised where the program is, as Ctrl-C raises KeyboardInterrupt, so that
    code taking back its work on an interruption (a sweep keeping a trained trial) treats them alike; ``signum``
    says which signal it was, for the exit status (128 + signum) and the one line the CLI prints."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum

    def __reduce__(self):  # as cls(*args) it could not be unpickled (a worker process's interruption)
        return type(self), (self.signum,), self.__dict__


def raise_signalled(signum: int, frame) -> None:
    """A signal handler: raise :class:`Signalled` for ``signum``."""
    raise Signalled(signum)


def deterministic_refusal(e: BaseException) -> str | None:
    """PyTorch's refusal, under ``torch.use_deterministic_algorithms(True)``, of an op that has no deterministic
    version, where ``e`` is one or was caused by one (torch.compile wraps it), as its first line without the
    advice that follows (e.g. "put_ does not have a deterministic implementation"); None for any other error."""
    seen = 0
    while e is not None and seen < 20:
        text = str(e)
        if "use_deterministic_algorithms(True)" in text and (
            "does not have a deterministic implementation" in text or "Deterministic behavior was enabled" in text
        ):
            return text.strip().splitlines()[0].split(", but you set")[0].strip()
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None
