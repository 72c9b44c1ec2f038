"""The benchmark's database: a scratch PostgreSQL database, with the demo models' registry rows.

DC_BENCH_DATABASE_URL when set; else a scratch database on the local PostgreSQL
(postgresql+psycopg2://postgres@127.0.0.1:5432, trust auth), dropped at the end; else, said
loudly in the output, a SQLite file (not the acceptance setting: production logs to
PostgreSQL). It is migrated to Alembic head and given the promoted registry rows of the demo
models, copied from var/dc.sqlite (read from a migrated copy; the file itself is left
untouched) or from the smoke models' registry.

SQLAlchemy, psycopg2 and the storage layer load only when a run needs them: the benchmarks'
`--help` stays quick.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import REPO
from bench.harness.client import ApiCounters
from bench.harness.processes import Server
from dc.config import VAR_DIR, Settings

DEMO_MODELS = ("banking77", "clinc150")
REGION = "global"
LOCAL_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
STABLE_FOR_S = 2.0  # the row count must not change for this long to count as flushed


@dataclass
class Database:
    url: str
    backend: str  # "postgresql" or "sqlite"
    how: str
    drop: Callable[[], None] | None = None  # removes a scratch database

    @property
    def display_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)


def _autocommit_connection(psycopg2, server):
    """A psycopg2 connection to the server's maintenance database, for CREATE/DROP DATABASE."""
    connection = psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.username,
        dbname=server.database,
        connect_timeout=3,
    )
    connection.autocommit = True
    return connection


def open_database(workdir: Path) -> Database:
    """DC_BENCH_DATABASE_URL, else a scratch database on the local PostgreSQL, else SQLite."""
    given = os.environ.get("DC_BENCH_DATABASE_URL", "").strip()
    if given:
        backend = "sqlite" if given.startswith("sqlite") else "postgresql"
        return Database(given, backend, "DC_BENCH_DATABASE_URL (kept; counts are deltas)")
    try:
        import psycopg2
        from sqlalchemy.engine import make_url

        server = make_url(LOCAL_POSTGRES)
        name = f"dc_bench_api_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = _autocommit_connection(psycopg2, server)
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        admin.close()
    except Exception as exc:  # no server, no trust auth, no driver: fall back, loudly
        path = workdir / "bench-api.sqlite"
        banner = "!" * 78
        print(
            f"{banner}\n! PostgreSQL not reachable at {LOCAL_POSTGRES} ({type(exc).__name__}:"
            f" {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}).\n"
            f"! FALLING BACK TO SQLITE ({path}): NOT the acceptance setting (production logs"
            f" to PostgreSQL).\n! Set DC_BENCH_DATABASE_URL to benchmark against PostgreSQL."
            f"\n{banner}"
        )
        return Database(
            f"sqlite:///{path}",
            "sqlite",
            "FALLBACK: SQLite file (PostgreSQL unreachable) - not the acceptance setting",
        )

    def drop() -> None:
        admin = _autocommit_connection(psycopg2, server)
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    url = server.set(database=name).render_as_string(hide_password=False)
    return Database(
        url, "postgresql", f"scratch database {name} on the local server (dropped)", drop
    )


def prepare_registry(
    database: Database, workdir: Path, settings: Settings, source_file: Path | None = None
) -> list[dict]:
    """Migrate the benchmark database and copy the demo models' promoted versions into it.

    Args:
        source_file: the SQLite registry to copy them from: var/dc.sqlite (`make demo`) by
            default, bench/smoke.py's for a smoke run.

    Returns:
        Per model: its name, the version copied and its artifact folder (relative to the
        checkout).
    """
    from persistence.db import make_engine, session_factory, upgrade

    source_file = source_file or VAR_DIR / "dc.sqlite"
    if not source_file.exists():
        raise SystemExit(f"{source_file} is missing: run .venv/bin/python scripts/demo.py first")
    # A migrated copy (sqlite's backup API: consistent even while someone writes the file).
    copy = workdir / "registry-copy.sqlite"
    with sqlite3.connect(source_file) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    upgrade(f"sqlite:///{copy}")
    upgrade(database.url)

    source_engine, target_engine = make_engine(f"sqlite:///{copy}"), make_engine(database.url)
    source, target = session_factory(source_engine), session_factory(target_engine)
    try:
        return [_copy_promoted(source, target, name, source_file, settings) for name in DEMO_MODELS]
    finally:
        source_engine.dispose()
        target_engine.dispose()


def _copy_promoted(source, target, name: str, source_file: Path, settings: Settings) -> dict:
    """Record `name`'s promoted version of the `source` registry in `target`, and promote it."""
    from persistence import registry

    with source() as session:
        rows = registry.list_versions(session, name, REGION)
    promoted = [row for row in rows if row.status == "promoted"]
    if not promoted:
        raise SystemExit(
            f"{name} has no promoted version in {source_file}: run "
            ".venv/bin/python scripts/demo.py first"
        )
    row = promoted[0]
    with target() as session:
        existing = {r.version for r in registry.list_versions(session, name, REGION)}
    record_and_promote(
        target, name, row, row.artifact_uri, settings, record=row.version not in existing
    )
    # Reported relative to the checkout: a results file names no machine's folders.
    artifact = row.artifact_uri.replace(f"file://{REPO}/", "")
    return {"model": name, "version": row.version, "artifact": artifact}


def record_and_promote(
    sessions, name: str, row, artifact_uri: str, settings: Settings, *, record: bool = True
) -> None:
    """Record `row` (a registry row of another database) as `name` with `artifact_uri` in the
    registry of `sessions` (unless `record` is false: it is there already), then promote it,
    forced."""
    from dc import promotion
    from persistence import registry

    if record:
        with sessions() as session:
            registry.record_version(
                session,
                name=name,
                region=REGION,
                version=row.version,
                metrics=row.metrics,
                embedder_fingerprint=row.embedder_fingerprint,
                artifact_uri=artifact_uri,
                config=row.config,
            )
    with sessions() as session:
        promotion.promote(
            session,
            name,
            REGION,
            row.version,
            tolerance=settings.promotion_tolerance,
            force=True,
        )


def count_rows(url: str) -> int:
    """The rows of the `inferences` table (the inference log) in the database at `url`."""
    from sqlalchemy import text

    from persistence.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM inferences")).scalar_one())
    finally:
        engine.dispose()


def wait_flushed(database: Database, api: Server, model: str, timeout_s: float = 60.0) -> int:
    """Wait until the `inferences` row count stops growing (and no row waits in a queue)."""
    deadline = time.monotonic() + timeout_s
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows = count_rows(database.url)
        now = time.monotonic()
        if rows != last:
            last, stable_since = rows, now
        elif (
            now - stable_since >= STABLE_FOR_S
            and ApiCounters.read(api.port, model).queue_depth == 0
        ):
            return rows
        time.sleep(0.25)
    print(f"  warning: the inference log did not settle within {timeout_s:.0f} s")
    return last
