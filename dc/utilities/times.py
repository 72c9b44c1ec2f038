"""Times given as text (a command line, a query string)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_time(value: str) -> datetime:
    """An ISO 8601 date or time as an aware UTC datetime; one without an offset is UTC.

    Named for argparse, whose message for a bad value quotes the type's name ("invalid
    utc_time value").

    Raises:
        ValueError: not ISO 8601.
    """
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
