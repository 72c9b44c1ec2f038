"""Alembic environment: which database, which metadata, how to connect.

The URL, first found wins: `alembic -x url=...`; the `sqlalchemy.url` main option (set in code
by `persistence.db.alembic_config`); the settings' `database_url_or_default` (DC_DATABASE_URL,
or the embedded SQLite file).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from dc.config import get_settings
from persistence.db import make_engine
from persistence.models import Base
from persistence.partitions import is_partition

config = context.config
target_metadata = Base.metadata
# PostgreSQL advisory lock key that serialises migrations (any 64-bit constant of this project's
# own): every API task migrates at start, and a first deployment starts several at once.
MIGRATION_LOCK_KEY = 0x64630000_6D696772

# The alembic command line configures logging from alembic.ini; a programmatic upgrade keeps the
# caller's logging (fileConfig would disable every logger that already exists).
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """The URL to migrate (see the module docstring for the order)."""
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or get_settings().database_url_or_default
    )


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """What autogenerate (and `alembic check`) compares: everything but the inference log's
    partitions, which `persistence.partitions` makes at run time and no model describes."""
    return not (type_ == "table" and name is not None and is_partition(name))


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (`alembic upgrade head --sql`) instead of running it."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Connect and migrate (in one transaction on PostgreSQL, whose DDL is transactional)."""
    engine = make_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things: later revisions get copy-and-move batches.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                include_name=include_name,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    # Held to the commit: a second migrator waits here, then finds the schema
                    # at head and has nothing to do.
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
