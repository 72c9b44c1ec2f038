"""The three batch jobs, as the driver runs them: read, map the workers' functions over the
partitions (`dc.batch.workers`), write, report.

Idempotent: Parquet outputs are written with dynamic partition overwrite (by model for
`score`, by embedder fingerprint for `embed`), so a re-run with the same inputs rewrites the
same files and leaves the other partitions alone; a PostgreSQL output table is replaced whole.
Spark retries a failed task on its own (`spark.task.maxFailures`; locally `local[N,F]`), and
a failed job is simply run again. Rows that break the API's rules are counted, listed (the
first `EXAMPLES`) and written to `<output>/_rejected/` when the output is Parquet: never a
reason to fail.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dc.batch.session import jdbc_options, partitions_for
from dc.batch.workers import (
    EMBED_SCHEMA,
    SCORE_SCHEMA,
    HeadRef,
    WorkerConfig,
    embed_partition,
    score_partition,
)
from dc.config import Settings
from dc.errors import DataError, NotFound

log = logging.getLogger(__name__)

EXAMPLES = 10


@dataclass
class JobReport:
    """What a job did: counts, time, where it wrote, and the rejected rows' first examples."""

    job: str
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(self.rows_per_s, 1),
            "outputs": self.outputs,
            "rejected_examples": self.examples,
            **self.figures,
        }


# --- inputs ------------------------------------------------------------------------------------


def read_phrases(
    spark,
    settings: Settings,
    *,
    sql: str | None = None,
    path: str | None = None,
    fmt: str | None = None,
    key: str = "id",
    text: str = "text",
):
    """The input as a DataFrame (key string, text string): a SQL query's result over JDBC on
    the project's PostgreSQL, or Parquet/CSV files (a local path or s3://; CSV with a header).

    Raises:
        DataError: neither or both given, a missing column, an unknown format.
    """
    from pyspark.sql import functions as F

    if (sql is None) == (path is None):
        raise DataError("give the input as exactly one of a SQL query or a path")
    if sql is not None:
        frame = spark.read.format("jdbc").options(**jdbc_options(settings), query=sql).load()
    else:
        fmt = fmt or ("csv" if path.rstrip("/").endswith(".csv") else "parquet")
        if fmt == "csv":
            frame = spark.read.option("header", "true").csv(path)
        elif fmt == "parquet":
            frame = spark.read.parquet(path)
        else:
            raise DataError(f"unknown input format {fmt!r} (parquet or csv)")
    missing = [name for name in (key, text) if name not in frame.columns]
    if missing:
        raise DataError(
            f"the input has no column {', '.join(map(repr, missing))} "
            f"(its columns: {', '.join(frame.columns)}); name them with --key and --text"
        )
    return frame.select(
        F.col(key).cast("string").alias("key"), F.col(text).cast("string").alias("text")
    )


def resolve_head(
    settings: Settings, model: str, version: str | None = None, *, region: str
) -> HeadRef:
    """A model's promoted version (or the named one) and its folder on this machine (restored
    from the S3 backup when it is not here, as serving does).

    Raises:
        NotFound: no such model or version in the registry.
    """
    from dc.serve.state import row_facts
    from dc.serve.version_files import version_folder
    from persistence import registry
    from persistence.db import make_engine, session_factory

    engine = make_engine(settings.database_url_or_default)
    try:
        with session_factory(engine)() as session:
            row = registry.find_version(session, model, region, version)
            if row is None:
                which = f"version {version}" if version else "promoted version"
                raise NotFound(f"no {which} of model {model!r} in region {region!r}")
            facts = row_facts(row)
    finally:
        engine.dispose()
    return HeadRef(model, facts["version"], str(version_folder(settings, facts)))


def worker_config(settings: Settings, heads: tuple[HeadRef, ...] = ()) -> WorkerConfig:
    return WorkerConfig(
        handle=settings.embedder_handle,
        backend=settings.encoder_backend,
        extra=settings.encoder_components,
        encoder_threads=settings.batch_encoder_threads,
        encoder_batch=settings.batch_encoder_batch,
        length_batch=settings.encoder_length_batch,
        max_chars=settings.max_text_chars,
        top_k=min(settings.default_top_k, settings.max_top_k),
        heads=heads,
    )


# --- the jobs ----------------------------------------------------------------------------------


def score(
    spark,
    settings: Settings,
    phrases,
    heads: list[HeadRef],
    *,
    output: str | None = None,
    output_table: str | None = None,
) -> JobReport:
    """Score `phrases` (key, text) with every head; write Parquet (partitioned by model) and/or
    a PostgreSQL table (replaced; top_k as JSON text)."""
    from pyspark.sql import functions as F

    if not heads:
        raise DataError("give at least one model to score with")
    if output is None and output_table is None:
        raise DataError("give an output: a Parquet path and/or a PostgreSQL table")
    config = worker_config(settings, tuple(heads))
    started = time.perf_counter()
    scored = (
        phrases.repartition(partitions_for(spark, settings))
        .mapInPandas(lambda batches: score_partition(batches, config), SCORE_SCHEMA)
        .cache()
    )
    report = JobReport("score")
    good = scored.where(F.col("error").isNull()).drop("error")
    bad = scored.where(F.col("error").isNotNull()).select("key", "text", "error")
    if output is not None:
        good.write.mode("overwrite").partitionBy("model").parquet(output)
        report.outputs.append(output)
    if output_table is not None:
        rows = good.withColumn("top_k", F.to_json("top_k"))
        rows.write.format("jdbc").options(**jdbc_options(settings)).option(
            "dbtable", output_table
        ).option("truncate", "true").mode("overwrite").save()
        report.outputs.append(f"table {output_table}")
    _rejected(report, bad, output)
    report.rows_out = good.count()
    report.rows_in = report.rows_out // len(heads) + report.rejected
    report.seconds = time.perf_counter() - started
    scored.unpersist()
    report.figures["models"] = [{"model": h.model, "version": h.version} for h in heads]
    return report


def embed(spark, settings: Settings, phrases, *, output: str) -> JobReport:
    """Embed the distinct texts of `phrases`; write (fingerprint, text, vector) Parquet,
    partitioned by fingerprint: the embedding cache of `dc.batch.vectors`."""
    from pyspark.sql import functions as F

    config = worker_config(settings)
    started = time.perf_counter()
    texts = phrases.select("text").distinct()
    embedded = (
        texts.repartition(partitions_for(spark, settings))
        .mapInPandas(lambda batches: embed_partition(batches, config), EMBED_SCHEMA)
        .cache()
    )
    report = JobReport("embed")
    good = embedded.where(F.col("error").isNull()).drop("error")
    good.write.mode("overwrite").partitionBy("fingerprint").parquet(output)
    report.outputs.append(output)
    _rejected(report, embedded.where(F.col("error").isNotNull()).select("text", "error"), output)
    report.rows_out = good.count()
    report.rows_in = report.rows_out + report.rejected
    report.seconds = time.perf_counter() - started
    embedded.unpersist()
    return report


def replay(
    spark,
    settings: Settings,
    candidate: HeadRef,
    *,
    region: str,
    start: datetime,
    end: datetime,
) -> JobReport:
    """Re-score the inference log's predictions of `candidate.model` in ``[start, end)`` with
    the candidate version: agreement with what was served, and, on predictions with feedback
    (the latest label of each), the accuracy and weighted F1 of both. The report goes to the
    candidate's folder: `replay/<start>_<end>.json`."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    from dc.reports import stats

    def table(name: str):
        # Spark pushes the filters below down into the SQL it sends, with its own quoting.
        return spark.read.format("jdbc").options(**jdbc_options(settings), dbtable=name).load()

    key = F.concat_ws(":", F.col("request_id"), F.col("item").cast("string")).alias("key")
    served = (
        table("inferences")
        .where(
            (F.col("model") == candidate.model)
            & (F.col("region") == region)
            & (F.col("created_at") >= F.lit(start.astimezone(UTC)))
            & (F.col("created_at") < F.lit(end.astimezone(UTC)))
        )
        .select(
            key,
            F.col("input_text").alias("text"),
            F.col("predicted_label").alias("served_label"),
            F.col("version").alias("served_version"),
        )
    )
    latest = Window.partitionBy("request_id", "item").orderBy(
        F.col("recorded_at").desc(), F.col("source")
    )
    truth = (
        table("feedback")
        .where((F.col("model") == candidate.model) & (F.col("region") == region))
        .withColumn("rank", F.row_number().over(latest))
        .where(F.col("rank") == 1)
        .select(key, F.col("label").alias("true_label"))
    )
    started = time.perf_counter()
    config = worker_config(settings, (candidate,))
    score_frame = (
        served.select("key", "text")
        .repartition(partitions_for(spark, settings))
        .mapInPandas(lambda batches: score_partition(batches, config), SCORE_SCHEMA)
    )
    joined = (
        score_frame.alias("c")
        .join(served.alias("s"), "key")
        .join(truth.alias("t"), "key", "left")
        .select("key", "c.label", "c.error", "s.served_label", "s.served_version", "t.true_label")
        .cache()
    )
    report = JobReport("replay")
    good = joined.where(F.col("error").isNull())
    _rejected(report, joined.where(F.col("error").isNotNull()).select("key", "error"), None)
    counts = good.groupBy(
        (F.col("label") == F.col("served_label")).alias("agree"),
        "true_label",
        "label",
        "served_label",
    ).count()
    agree = total = 0
    candidate_pairs: dict[tuple[str, str], int] = {}
    served_pairs: dict[tuple[str, str], int] = {}
    for row in counts.collect():
        total += row["count"]
        agree += row["count"] if row["agree"] else 0
        if row["true_label"] is not None:
            pair = (row["true_label"], row["label"])
            candidate_pairs[pair] = candidate_pairs.get(pair, 0) + row["count"]
            pair = (row["true_label"], row["served_label"])
            served_pairs[pair] = served_pairs.get(pair, 0) + row["count"]
    served_versions = sorted(
        r["served_version"] for r in good.select("served_version").distinct().collect()
    )
    joined.unpersist()
    report.rows_in = total + report.rejected
    report.rows_out = total
    report.seconds = time.perf_counter() - started
    candidate_figures = stats.classification(candidate_pairs)
    served_figures = stats.classification(served_pairs)
    report.figures = {
        "model": candidate.model,
        "region": region,
        "candidate_version": candidate.version,
        "served_versions": served_versions,
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "agreement": agree / total if total else None,
        "feedback_items": sum(candidate_pairs.values()),
        "candidate": _headline(candidate_figures),
        "served": _headline(served_figures),
    }
    name = f"{start.astimezone(UTC):%Y%m%dT%H%MZ}_{end.astimezone(UTC):%Y%m%dT%H%MZ}.json"
    path = Path(candidate.folder) / "replay" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    report.outputs.append(str(path))
    return report


def _headline(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    if figures is None:
        return None
    return {name: figures[name] for name in ("n", "accuracy", "weighted_f1", "macro_f1")}


def _rejected(report: JobReport, bad, output: str | None) -> None:
    report.rejected = bad.count()
    if not report.rejected:
        return
    report.examples = [row.asDict() for row in bad.limit(EXAMPLES).collect()]
    log.warning("%d rows rejected (left out); the first: %s", report.rejected, report.examples[:3])
    if output is not None:
        target = output.rstrip("/") + "/_rejected"
        bad.write.mode("overwrite").parquet(target)
        report.outputs.append(target)
