"""The retraining pipeline: SQL extract -> preparation -> training -> registry -> S3 -> promotion.

`train_model` runs it for one configured model; `scripts/train.py` is its command line.
Each stage is a module of its own (`dc.queries`, `dc.preparation`, `dc.train`,
`persistence.registry`, `dc.backup`); this module only sequences them and decides what is
recorded where.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from dc.config import Settings
from dc.errors import InvalidInput
from dc.model_config import ModelConfig
from dc.nlp.embeddings import Embedder
from dc.queries.training import fetch_training_rows, regions_with_rows

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """What one training run produced and where it was recorded."""

    name: str
    region: str
    version: str
    version_dir: Path
    metrics: dict
    artifact_uri: str
    promoted: bool
    seconds: dict[str, float] = field(default_factory=dict)


def require_training_rows(config: ModelConfig, engine: Engine, *, retries: int = 3) -> None:
    """Raise InvalidInput, saying where `config`'s rows are instead, when its region has none
    within its history window. Cheap (one grouped count, no model loaded): scripts/train.py
    runs it for every config before it loads the encoder."""
    from persistence.models import utcnow

    source, region, days = config.data.source, config.model.region, config.data.history_days
    since = utcnow() - timedelta(days=days)
    where = regions_with_rows(engine, source, since, retries=retries)
    if where.get(region, (0, 0))[0]:
        return
    problem = (
        f"no training rows for model {source!r} in region {region!r} within the last {days} days"
    )
    if region in where:
        hint = (
            f"its {where[region][1]:,} rows there are older: raise [data] history_days or "
            "load newer rows"
        )
    elif where:
        found = ", ".join(f"{r!r} ({total:,} rows)" for r, (_, total) in where.items())
        hint = (
            f"the table has its rows in region {found}: set [model] region in the config to "
            f"that region, or load the rows again with --region {region}"
        )
    else:
        hint = (
            f"the table has no rows for it at all: load them with "
            f"`python scripts/load_training_data.py --model {source} FILE.csv`"
        )
    raise InvalidInput(f"{problem}; {hint}")


def train_model(
    config: ModelConfig,
    settings: Settings,
    *,
    embedder: Embedder,
    engine: Engine,
    promote: bool = False,
    force: bool = False,
    backup: bool = True,
) -> PipelineResult:
    """Train one configured model from the database and record the new version.

    Args:
        config: the model's training config.
        settings: paths, database, S3 and promotion tolerance.
        embedder: the embedding client (local or remote) the head is trained on.
        engine: the database holding the training rows and the registry.
        promote: promote the new version if the promotion rule allows it.
        force: promote even when the rule refuses (weighted F1 worse than the promoted
            version's by more than `settings.promotion_tolerance`).
        backup: copy the version folder to S3 when a bucket is configured.

    Returns:
        The version, its folder and metrics, where it is backed up, and whether it was promoted.

    Raises:
        InvalidInput: no training rows in the history window.
        PromotionRefused: `promote` was asked, the rule refused and `force` was not given.
    """
    from dc import promotion  # not `import promote`: that would shadow the argument
    from dc.backup import backup_version
    from dc.train import train_version
    from persistence import registry
    from persistence.db import session_factory

    name, region = config.model.name, config.model.region
    new_session = session_factory(engine)  # each registry function is one transaction of its own
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    raw = fetch_training_rows(
        engine,
        config.data.source,
        region,
        config.data.history_days,
        retries=settings.db_retries,
    )
    seconds["extract"] = time.perf_counter() - started
    if raw.empty:
        require_training_rows(config, engine, retries=settings.db_retries)
    log.info("%s/%s: %d raw rows extracted in %.1f s", region, name, len(raw), seconds["extract"])

    with new_session() as session:
        version = registry.next_version(session, name, region)
    started = time.perf_counter()
    result = train_version(config, settings, embedder, raw, version)
    seconds["train"] = time.perf_counter() - started

    artifact_uri = result.version_dir.resolve().as_uri()
    if backup and settings.s3_bucket:
        started = time.perf_counter()
        artifact_uri = backup_version(
            result.version_dir, settings, region=region, model=name, version=version
        )
        seconds["backup"] = time.perf_counter() - started

    with new_session() as session:
        registry.record_version(
            session,
            name=name,
            region=region,
            version=version,
            metrics=result.metrics,
            embedder_fingerprint=embedder.fingerprint,
            artifact_uri=artifact_uri,
            config=config.as_dict(),
        )
    promoted = False
    if promote:
        with new_session() as session:
            promotion.promote(
                session,
                name,
                region,
                version,
                tolerance=settings.promotion_tolerance,
                force=force,
            )
        promoted = True
    log.info(
        "%s/%s version %s: test accuracy %.4f, weighted F1 %.4f%s",
        region,
        name,
        version,
        result.metrics["accuracy"],
        result.metrics["weighted_f1"],
        ", promoted" if promoted else "",
    )
    return PipelineResult(
        name=name,
        region=region,
        version=version,
        version_dir=result.version_dir,
        metrics=result.metrics,
        artifact_uri=artifact_uri,
        promoted=promoted,
        seconds=seconds,
    )
