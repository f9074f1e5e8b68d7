"""Exceptions raised for things a user can get wrong.

Every message says where (file:field, or stage and artifact path), what it got, what it expected and what to
do next. The CLI prints these as one line and exits with status 2, without a traceback.
"""


class ReasonRecError(Exception):
    """Base class of every error reasonrec raises on purpose."""


class ConfigError(ReasonRecError):
    """A configuration file or option is invalid."""


class DataError(ReasonRecError):
    """A dataset file is missing, truncated or malformed, or a protocol cannot be applied."""


class BackendError(ReasonRecError):
    """An LLM backend or model cannot be loaded or answered badly."""


class StageError(ReasonRecError):
    """A pipeline stage found inconsistent artifacts in its run directory."""


class RunLockedError(StageError):
    """Another process is running in the same run directory."""
