"""What the storage layer raises. It knows nothing of HTTP or of the core's error table: the
core (`dc/`) turns these into its own errors where a caller needs an answer."""

from __future__ import annotations


class RecordNotFound(LookupError):
    """No row matches (a version, a promoted version, a previous version to roll back to)."""
