"""The project's own error types.

Every problem caused by the user's input (a config, a data file, a checkpoint)
is raised as a subclass of :class:`MnistlabError` with a message that says what
was wrong, what was expected and how to fix it. The CLI prints these messages
without a traceback; anything else is a bug in mnistlab.
"""


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
