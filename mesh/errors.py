"""One exception hierarchy for Elton.

Each class's docstring is the one-line message a user sees (the CLI prints it, the HTTP API
returns it with the class's status). Raise with a detail that names the problem:
``raise InvalidKey("'a//b' has an empty segment")``.
"""

from __future__ import annotations


class EltonError(Exception):
    """Elton failed."""

    http_status = 500
    exit_code = 1
    code = "error"

    def __init__(self, detail: str = "", *, message: str | None = None) -> None:
        self.detail = detail
        head = (self.__doc__ or self.__class__.__name__).strip().splitlines()[0].rstrip(".")
        self.message = message or (f"{head}: {detail}" if detail else head)
        super().__init__(self.message)

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class InvalidKey(EltonError):
    """Invalid key."""

    http_status = 400
    code = "invalid_key"


class InvalidRequest(EltonError):
    """Invalid request."""

    http_status = 400
    code = "invalid_request"


class NotFound(EltonError):
    """Not found."""

    http_status = 404
    code = "not_found"


class KeyNotFound(NotFound):
    """No such key."""

    code = "key_not_found"


class VersionNotFound(NotFound):
    """No such version."""

    code = "version_not_found"


class ChunkMissing(NotFound):
    """A chunk of this version is not available here."""

    code = "chunk_missing"


class Conflict(EltonError):
    """Conflict."""

    http_status = 409
    code = "conflict"


class RangeNotSatisfiable(EltonError):
    """Requested range not satisfiable."""

    http_status = 416
    code = "range_not_satisfiable"


class IncompleteUpload(EltonError):
    """Upload incomplete; nothing was stored."""

    http_status = 400
    code = "incomplete_upload"


class TooLarge(EltonError):
    """Too large."""

    http_status = 413
    code = "too_large"


class CorruptChunk(EltonError):
    """Stored data is corrupt (hash mismatch); it was not served."""

    http_status = 500
    code = "corrupt_chunk"


class StorageFull(EltonError):
    """No space left in the data directory; nothing was stored."""

    http_status = 507
    code = "storage_full"


class Unavailable(EltonError):
    """Temporarily unavailable."""

    http_status = 503
    code = "unavailable"


class ReplicasUnreachable(Unavailable):
    """The key's home could not reach a majority of its replicas; no version was acknowledged."""

    code = "replicas_unreachable"


class Unauthorized(EltonError):
    """Not authorised."""

    http_status = 401
    code = "unauthorized"


class DataDirInUse(EltonError):
    """The data directory is in use by another eltond."""

    code = "data_dir_in_use"


class ConfigError(EltonError):
    """Invalid configuration."""

    code = "config"


class DaemonUnreachable(EltonError):
    """Cannot reach eltond."""

    code = "unreachable"


class NotRunning(EltonError):
    """eltond is not running."""

    code = "not_running"


class ProtocolError(EltonError):
    """A peer sent a message we drop.

    Raised by cores and codecs for a malformed, forged, replayed or oversized message; the
    runtime drops the message and counts it by ``reason``. Never a bug of ours.
    """

    code = "protocol"

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(detail, message=f"{reason}: {detail}" if detail else reason)


_BY_CODE: dict[str, type[EltonError]] = {}


def _index(cls: type[EltonError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


def from_json(body: dict[str, str], status: int) -> EltonError:
    """Rebuild an error the HTTP API returned, so a client raises the same class."""
    if not _BY_CODE:
        _index(EltonError)
    cls = _BY_CODE.get(str(body.get("error", "")), EltonError)
    if cls is ProtocolError:
        cls = EltonError
    return cls(message=str(body.get("message") or f"HTTP {status}"))
