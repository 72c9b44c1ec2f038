"""Engines, sessions and migrations. Nothing connects (or creates a folder) until called.

Callers pass the URL explicitly: services and scripts take it from
`dc.config.get_settings().database_url_or_default`, tests from their fixtures.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = REPO_ROOT / "alembic.ini"


def make_engine(url: str, **engine_kwargs: Any) -> Engine:
    """Create an engine for `url` (PostgreSQL or SQLite).

    For a SQLite file the parent folder is created first (the embedded default lives in var/,
    which is never committed). For PostgreSQL, pooled connections are pinged on checkout, so a
    connection dropped by a database restart or an idle timeout is replaced instead of failing
    the next query.

    Args:
        url: SQLAlchemy URL, e.g. ``postgresql+psycopg2://user@host/db`` or ``sqlite:///path``.
        engine_kwargs: passed on to `sqlalchemy.create_engine` (they win over the defaults).
    """
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        options["pool_pre_ping"] = True
    options.update(engine_kwargs)
    return create_engine(parsed, **options)


def is_reachable(url: str, timeout_s: int = 3) -> bool:
    """Whether a database at `url` accepts a connection within `timeout_s` (PostgreSQL).

    For the tools that need a PostgreSQL and look for one (the tests, the image smoke test):
    no pool, nothing kept open, a driver error is an answer (False), not an exception.
    """
    from sqlalchemy import exc
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": timeout_s})
    try:
        with engine.connect():
            return True
    except exc.DBAPIError:
        return False
    finally:
        engine.dispose()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A `sessionmaker` bound to `engine` whose objects stay readable after commit.

    `expire_on_commit=False`: the registry functions commit their own transactions and return
    the rows they wrote; reading those attributes afterwards must not start a new transaction.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """The repository's Alembic configuration (alembic.ini) aimed at `url`.

    The returned `alembic.config.Config` also tells `env.py` not to reconfigure logging, which
    the alembic command line wants but which would silence the caller's loggers.
    """
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    # The ini file is read with configparser interpolation: a literal % (URL-encoded
    # password characters) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Run `alembic upgrade <revision>` on `url`; a database already there is left unchanged.

    Alembic's own INFO lines (its dialect, each step) are held back; one line says what
    changed, and nothing is said when nothing did.
    """
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(max(level, logging.WARNING))  # before the import: it logs its plugins
    try:
        from alembic import command

        before = current_revision(url)
        command.upgrade(alembic_config(url), revision)
        after = current_revision(url)
    finally:
        alembic_log.setLevel(level)
    if after != before:
        log.info(
            "database schema upgraded from %s to %s (%s)",
            before or "empty",
            after,
            make_url(url).render_as_string(hide_password=True),
        )


def current_revision(url: str) -> str | None:
    """The Alembic revision `url`'s schema is at, or None for a database without one."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
