"""The closed set of errors the core raises; transports map each one to an HTTP status in one table.

Every error carries a stable machine-readable `code` (used in the JSON error envelope) and a
message written for the caller: it never holds an internal detail (a driver's message, a path,
a host name, a stack trace). Those go in `detail`, which the transports log and never send.
`retry_after_s` is set where waiting and retrying helps.
"""

from __future__ import annotations


class DCError(Exception):
    """Base of every error the core raises on purpose."""

    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int | None = None,
        detail: str | None = None,
        items: list[dict] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.detail = detail
        # Per-item errors of a batch refused whole ({"index", "code", "message"} each), sent in
        # the envelope as `error.items`.
        self.items = items


class InvalidInput(DCError):
    """The request is well-formed but its content breaks a rule (types, emptiness, lengths)."""

    code = "invalid_input"


class MalformedRequest(DCError):
    """The request body could not be parsed (not JSON, wrong encoding)."""

    code = "malformed_request"


class UnsupportedMediaType(DCError):
    """The request's Content-Type is not one this endpoint reads."""

    code = "unsupported_media_type"


class TooLarge(DCError):
    """The request carries more than the configured limits allow (too many texts, body too big)."""

    code = "too_large"


class NotFound(DCError):
    """The addressed resource (model, version, route) does not exist."""

    code = "not_found"


class Overloaded(DCError):
    """A bounded queue is full: the caller should back off and retry after `retry_after_s`."""

    code = "overloaded"


class NotReady(DCError):
    """The service is starting (model loading or warming up)."""

    code = "not_ready"


class DatabaseUnavailable(DCError):
    """The database (model registry, inference log) cannot be reached or answered an error."""

    code = "database_unavailable"


class EmbedderUnavailable(DCError):
    """The central embedder service cannot be reached or keeps failing."""

    code = "embedder_unavailable"


class EmbedderMismatch(DCError):
    """A model was trained on a different embedder (fingerprint) than the one running."""

    code = "embedder_mismatch"


class PromotionRefused(DCError):
    """A candidate version scores below the promoted one by more than the tolerance."""

    code = "promotion_refused"


class DataError(DCError):
    """Input data (a training CSV, its columns or values) breaks the expected format."""

    code = "data_error"


class BackupError(DCError):
    """An S3 backup or restore of a version folder could not be done or did not verify."""

    code = "backup_error"


class Unauthorized(DCError):
    """The admin token is missing or wrong."""

    code = "unauthorized"


class Forbidden(DCError):
    """The operation is switched off by configuration."""

    code = "forbidden"
