"""Errors a user can cause. The CLI prints them in one line, without a traceback."""


class ShoalError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(ShoalError):
    """A config key, type or value that is not allowed."""


class DataError(ShoalError):
    """A missing, unreadable or empty data source or prepared dataset."""


class CheckpointError(ShoalError):
    """A missing, corrupt or incompatible checkpoint or bundle."""


class TrainingError(ShoalError):
    """Training cannot go on (for example, the loss stayed non-finite)."""


class OutputError(ShoalError):
    """An output folder that cannot be created or written."""
