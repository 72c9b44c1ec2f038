"""Logging set-up for services and scripts: called by factories and `main()`s, never on import."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stderr at `level`, once per process (later calls only set the level)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT)
    root.setLevel(level.upper())
