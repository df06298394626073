"""Every error aptops raises.

Each class also inherits the builtin it resembles, so ``except ValueError`` or ``except OSError`` in a
caller keeps working. Messages say what failed, the value seen, and what to do; they never carry secrets.
"""

from __future__ import annotations


class AptopsError(Exception):
    """Base of every aptops error."""


class ConfigError(AptopsError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range.

    Args:
        message: what is wrong and how to fix it.
        field: the dotted name of the offending field, when there is one.
        value: the value seen (already redacted where it could be a secret).
    """

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class LocationError(ConfigError):
    """A storage location (path or URI) is malformed or uses an unsupported scheme."""

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message, field="location", value=uri)
        self.uri = uri


class ArtifactNotFoundError(AptopsError, FileNotFoundError):
    """An input artifact (dataset, model, report) does not exist or is incomplete."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class InvalidArtifactError(AptopsError, ValueError):
    """An input exists but its content is not what the stage expects (wrong format, missing column)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class OutputExistsError(AptopsError, FileExistsError):
    """An output location holds something aptops must not replace (a user's files, another kind of artifact,
    an input of the same run), or another process is writing it now."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StorageError(AptopsError, OSError):
    """A storage backend failed; carries the URI and the provider (never the credentials)."""

    def __init__(self, message: str, *, uri: str | None = None, provider: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri
        self.provider = provider


class DiskFullError(StorageError):
    """A local disk ran out of space (or quota) while aptops wrote to it; what was half-written is removed."""


def is_disk_full(exc: BaseException) -> bool:
    """True for the ``OSError`` a write raises when its disk or quota is full."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class MissingDependencyError(AptopsError, ImportError):
    """An optional dependency of one stage is not installed; the message names the extra to install."""


class PluginError(AptopsError, LookupError):
    """A legacy plugin or adapter is unknown, or the plugin bus was used out of order."""


class PipelineError(AptopsError, RuntimeError):
    """A pipeline is unknown, failed to compile, or failed while running."""
