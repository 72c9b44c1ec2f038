"""The model registry: record trained versions, find the promoted one, switch promotions.

Transactions: every function takes a `Session` and runs as ONE transaction of its own
(`with session.begin()`), committed when it returns and rolled back if it raises. Pass a
session with no transaction in progress: a fresh one from `persistence.db.session_factory`,
whose `expire_on_commit=False` keeps the returned rows readable without a new transaction.
(SQLAlchemy raises "A transaction is already begun" otherwise, instead of this module silently
committing or joining the caller's work.)

Versions are UTC timestamps (`next_version`); at most one version per name and region is
"promoted" (a partial unique index guarantees it), older promoted ones become "archived".
Serving workers poll `promoted_versions`; `rollback` and `request_reload` are the admin calls
they pick up that way. Whether a version may be promoted is the core's rule
(`dc.promotion.promote`), decided inside the locked transaction of `promotion`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from persistence.errors import RecordNotFound
from persistence.models import ModelVersion, to_utc, utcnow

log = logging.getLogger(__name__)

VERSION_FORMAT = "%Y%m%dT%H%M%SZ"


def next_version(session: Session, name: str, region: str, *, now: datetime | None = None) -> str:
    """A new version string for `name`/`region`: the UTC time as ``YYYYMMDDTHHMMSSZ``.

    When that version exists already (two trainings in the same second) ``-2``, ``-3``... is
    appended. Two processes asking at once may still get the same answer; the unique constraint
    makes the second `record_version` fail rather than overwrite.

    Args:
        now: the time to use (default: now); naive means UTC.
    """
    stamp = to_utc(now or utcnow()).strftime(VERSION_FORMAT)
    with session.begin():
        taken = set(
            session.scalars(
                select(ModelVersion.version).where(
                    ModelVersion.name == name,
                    ModelVersion.region == region,
                    ModelVersion.version.startswith(stamp, autoescape=True),
                )
            )
        )
    version, n = stamp, 1
    while version in taken:
        n += 1
        version = f"{stamp}-{n}"
    return version


def record_version(
    session: Session,
    *,
    name: str,
    region: str,
    version: str,
    metrics: dict[str, Any],
    embedder_fingerprint: str,
    artifact_uri: str,
    config: dict[str, Any],
) -> ModelVersion:
    """Record a trained version (status "trained") and return it.

    Raises:
        sqlalchemy.exc.IntegrityError: that name, region and version exist already.
    """
    row = ModelVersion(
        name=name,
        region=region,
        version=version,
        status="trained",
        metrics=metrics,
        embedder_fingerprint=embedder_fingerprint,
        artifact_uri=artifact_uri,
        config=config,
        created_at=utcnow(),
    )
    with session.begin():
        session.add(row)
    log.info("recorded %s/%s version %s (%s)", region, name, version, artifact_uri)
    return row


def promoted_version(session: Session, name: str, region: str) -> ModelVersion | None:
    """The promoted version of `name`/`region`, or None when none is promoted."""
    with session.begin():
        return session.scalars(
            select(ModelVersion).where(
                ModelVersion.name == name,
                ModelVersion.region == region,
                ModelVersion.status == "promoted",
            )
        ).one_or_none()


def find_version(
    session: Session, name: str, region: str, version: str | None = None
) -> ModelVersion | None:
    """`version` of `name`/`region`, or its promoted version when `version` is None; None when
    there is no such row."""
    if version is None:
        return promoted_version(session, name, region)
    with session.begin():
        return session.scalars(
            select(ModelVersion).where(
                ModelVersion.name == name,
                ModelVersion.region == region,
                ModelVersion.version == version,
            )
        ).one_or_none()


def list_versions(
    session: Session, name: str | None = None, region: str | None = None
) -> list[ModelVersion]:
    """Recorded versions, optionally of one name and/or region, oldest first."""
    query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.region, ModelVersion.id)
    if name is not None:
        query = query.where(ModelVersion.name == name)
    if region is not None:
        query = query.where(ModelVersion.region == region)
    with session.begin():
        return list(session.scalars(query))


@dataclass
class Promotion:
    """The rows of a promotion in progress (`promotion`): the version to promote and the one
    promoted now (None when there is none, `candidate` itself when it is promoted already)."""

    candidate: ModelVersion
    current: ModelVersion | None


@contextlib.contextmanager
def promotion(session: Session, name: str, region: str, version: str) -> Iterator[Promotion]:
    """Promote `version` of `name`/`region`, archiving the promoted one, in one transaction.

    The versions of `name`/`region` are locked (SELECT ... FOR UPDATE on PostgreSQL) for the
    whole block, so two promotions of the same model run one after the other. The block sees
    both rows and decides: when it raises, nothing changes; when it returns, the switch is
    written and committed. Promoting the version that is promoted already changes nothing. An
    archived version may be promoted again (a rollback).

    Raises:
        RecordNotFound: no such version.
    """
    with session.begin():
        rows = _locked_versions(session, name, region)
        candidate = next((row for row in rows if row.version == version), None)
        if candidate is None:
            raise RecordNotFound(f"no version {version!r} of model {name!r} in region {region!r}")
        current = next((row for row in rows if row.status == "promoted"), None)
        yield Promotion(candidate, current)
        if current is candidate:
            return
        if current is not None:
            current.status = "archived"
            # The partial unique index allows one promoted row at a time, and the unit of work
            # orders UPDATEs by primary key: write the archive first.
            session.flush()
        candidate.status = "promoted"
        candidate.promoted_at = utcnow()
    if current is not candidate:
        log.info(
            "promoted %s/%s %s (was %s)",
            region,
            name,
            version,
            current.version if current is not None else "none",
        )


def promoted_versions(session: Session, region: str | None = None) -> list[ModelVersion]:
    """Every promoted version, optionally of one region, sorted by name.

    This is what each API worker polls to notice promotions, rollbacks and reload requests made
    through another worker: one small SELECT on the partial index of promoted rows.
    """
    query = select(ModelVersion).where(ModelVersion.status == "promoted")
    if region is not None:
        query = query.where(ModelVersion.region == region)
    with session.begin():
        return list(session.scalars(query.order_by(ModelVersion.name, ModelVersion.region)))


def previous_version(session: Session, name: str, region: str) -> ModelVersion | None:
    """The version promoted before the current one: the archived one promoted last, or None.

    Only versions that were once promoted are archived, so "archived with the latest
    `promoted_at`" is the previously promoted version.
    """
    with session.begin():
        return _previous(session, name, region)


def _previous(
    session: Session, name: str, region: str, *, lock: bool = False
) -> ModelVersion | None:
    query = (
        select(ModelVersion)
        .where(
            ModelVersion.name == name,
            ModelVersion.region == region,
            ModelVersion.status == "archived",
            ModelVersion.promoted_at.is_not(None),
        )
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


def rollback(session: Session, name: str, region: str) -> ModelVersion:
    """Promote the previously promoted version of `name`/`region` again, in one transaction.

    The promotion rule is not applied (a rollback is a deliberate return to a version that was
    serving before; logged as a warning like a forced promotion). The current version becomes
    archived with its `promoted_at` kept, so a second rollback returns to it.

    Returns:
        The version promoted again.

    Raises:
        RecordNotFound: no version of `name`/`region` was promoted before the current one.
    """
    with session.begin():
        rows = _locked_versions(session, name, region)
        current = next((row for row in rows if row.status == "promoted"), None)
        previous = _previous(session, name, region)
        if previous is None:
            raise RecordNotFound(
                f"model {name!r} in region {region!r} has no previously promoted version to "
                "roll back to"
            )
        if current is not None:
            current.status = "archived"
            session.flush()  # the partial unique index allows one promoted row at a time
        previous.status = "promoted"
        previous.promoted_at = utcnow()
    log.warning(
        "rolled back %s/%s from %s to %s",
        region,
        name,
        current.version if current is not None else "none",
        previous.version,
    )
    return previous


def request_reload(
    session: Session, name: str, region: str, *, now: datetime | None = None
) -> ModelVersion:
    """Ask every serving worker to reload the promoted version's files.

    Sets the promoted row's `reload_requested_at`; the workers polling `promoted_versions` see
    it change and load the files again (e.g. after the version folder was repaired).

    Args:
        now: the time to record (default: now); naive means UTC.

    Returns:
        The promoted version.

    Raises:
        RecordNotFound: `name`/`region` has no promoted version.
    """
    with session.begin():
        row = session.scalars(
            select(ModelVersion)
            .where(
                ModelVersion.name == name,
                ModelVersion.region == region,
                ModelVersion.status == "promoted",
            )
            .with_for_update()
        ).one_or_none()
        if row is None:
            raise RecordNotFound(f"model {name!r} has no promoted version in region {region!r}")
        row.reload_requested_at = to_utc(now or utcnow())
    log.info("reload of %s/%s %s requested", region, name, row.version)
    return row


def _locked_versions(session: Session, name: str, region: str) -> list[ModelVersion]:
    # SELECT ... FOR UPDATE on PostgreSQL (SQLite locks the whole file on write anyway): the
    # promotions and rollbacks of one model run one after the other.
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.name == name, ModelVersion.region == region)
            .with_for_update()
        )
    )
