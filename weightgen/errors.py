"""Errors a user can cause. The CLI prints `str(e)` as one line and exits non-zero."""


class WeightgenError(Exception):
    """Base class of user-facing errors: the message is one line naming the input and the fix."""


class ConfigError(WeightgenError, ValueError):
    """A preset, flag or config value is invalid."""
