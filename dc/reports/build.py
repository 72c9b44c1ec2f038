"""One production report: a model, a region, a time window, optionally a version, in hour, day
or week buckets, from the inference log and its feedback (SQL in `dc.queries.reports`, statistics
in `dc.reports.stats`), each figure beside the served version's reference (`dc.reports.reference`).

The report is a JSON-ready dict with four sections:
- `traffic`: requests, texts and cache hit rate per version and per bucket; request latency
  p50/p95/p99;
- `predictions`: the label distribution against the reference version's training distribution
  (PSI per bucket and over the window, a chi-square test, the drift flag), mean and histogram of
  the served labels' probability, the fallback-rule rate, the share of phrases never seen in
  training;
- `feedback`: coverage, accuracy, weighted F1 (the headline), macro F1, ECE, per-class figures,
  the top confusions and weighted F1 per bucket, each against the reference's test-set figures;
- `comparison` (when two versions are named): the headline figures of both side by side.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from dc.errors import InvalidInput
from dc.queries import reports as sql
from dc.reports import stats
from dc.reports.reference import ReferenceLookup, VersionReference
from persistence.models import to_utc

MAX_BUCKETS = 750  # a month of hours; longer windows take days or weeks
MAX_WINDOW_DAYS = 400
_STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
# The headline figures of a version comparison: (section, figure).
HEADLINE = (
    ("traffic", "texts"),
    ("traffic", "cache_hit_rate"),
    ("traffic", "latency_p99_ms"),
    ("predictions", "psi"),
    ("predictions", "drift"),
    ("predictions", "mean_probability"),
    ("predictions", "fallback_rate"),
    ("predictions", "unseen_share"),
    ("feedback", "coverage"),
    ("feedback", "accuracy"),
    ("feedback", "weighted_f1"),
    ("feedback", "macro_f1"),
    ("feedback", "ece"),
)


@dataclass(frozen=True)
class ReportRequest:
    """What to report on. `start` and `end` are aware or UTC; the window is ``[start, end)``.

    `version` keeps only that version's predictions; `compare` names a second version whose
    headline figures are set beside the first's (the first is `version`, else the reference).
    """

    model: str
    region: str
    start: datetime
    end: datetime
    granularity: str = "day"
    version: str | None = None
    compare: str | None = None

    def checked(self) -> ReportRequest:
        """This request with its times in UTC, or InvalidInput (422) naming what is wrong."""
        if self.granularity not in sql.GRANULARITIES:
            raise InvalidInput(
                f"granularity must be one of {', '.join(sql.GRANULARITIES)}, "
                f"not {self.granularity!r}"
            )
        start, end = to_utc(self.start), to_utc(self.end)
        if end <= start:
            raise InvalidInput("the window is empty: 'end' must be later than 'start'")
        if end - start > timedelta(days=MAX_WINDOW_DAYS):
            raise InvalidInput(f"the window is longer than {MAX_WINDOW_DAYS} days")
        buckets = len(bucket_starts(start, end, self.granularity))
        if buckets > MAX_BUCKETS:
            raise InvalidInput(
                f"the window holds {buckets} {self.granularity}s, more than {MAX_BUCKETS}: "
                "choose a coarser granularity or a shorter window"
            )
        if self.compare is not None and self.compare == self.version:
            raise InvalidInput("'compare' must name another version than 'version'")
        return ReportRequest(
            self.model, self.region, start, end, self.granularity, self.version, self.compare
        )


def bucket_starts(start: datetime, end: datetime, granularity: str) -> list[datetime]:
    """Every bucket start that touches ``[start, end)``, in order (UTC; weeks start on Monday)."""
    start = to_utc(start)
    first = start.replace(minute=0, second=0, microsecond=0)
    if granularity != "hour":
        first = first.replace(hour=0)
    if granularity == "week":
        first -= timedelta(days=first.weekday())
    step = _STEP[granularity]
    starts, current = [], first
    while current < to_utc(end):
        starts.append(current)
        current += step
    return starts


def build_report(
    connection: Connection,
    request: ReportRequest,
    references: ReferenceLookup,
    *,
    served: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report of `request` (see the module docstring).

    Args:
        connection: to the inference database.
        references: each version's reference (None where its files cannot be read).
        served: the version the model serves now: the reference when `version` is not given.
        now: the report's time stamp (default: the current time).

    Raises:
        InvalidInput: the request breaks a rule (`ReportRequest.checked`).
    """
    request = request.checked()
    scope = sql.Scope(request.model, request.region, request.start, request.end, request.version)
    buckets = bucket_starts(request.start, request.end, request.granularity)
    traffic_rows = sql.traffic(connection, scope, request.granularity)
    versions = sorted({row["version"] for row in traffic_rows})
    reference_version = request.version or served or _busiest(traffic_rows)
    reference = references(reference_version) if reference_version else None
    notes: list[str] = []
    if reference_version and reference is None:
        notes.append(
            f"the files of version {reference_version} cannot be read here: the figures that "
            "need its training data or test results are missing"
        )
    report: dict[str, Any] = {
        "model": request.model,
        "region": request.region,
        "window": {
            "start": _iso(request.start),
            "end": _iso(request.end),
            "granularity": request.granularity,
            "buckets": [_iso(b) for b in buckets],
        },
        "version": request.version,
        "served_version": served,
        "reference_version": reference_version,
        "versions": versions,
        "generated_at": _iso(now or datetime.now(UTC)),
        **_figures(
            connection, scope, request.granularity, buckets, traffic_rows, reference, references
        ),
        "comparison": None,
        "notes": notes,
    }
    if request.compare is not None:
        report["comparison"] = _comparison(
            connection, request, buckets, reference_version, references
        )
    return report


def _figures(
    connection: Connection,
    scope: sql.Scope,
    granularity: str,
    buckets: list[datetime],
    traffic_rows: list[dict[str, Any]],
    reference: VersionReference | None,
    references: ReferenceLookup,
) -> dict[str, Any]:
    return {
        "traffic": _traffic(connection, scope, granularity, buckets, traffic_rows),
        "predictions": _predictions(
            connection, scope, granularity, buckets, traffic_rows, reference, references
        ),
        "feedback": _feedback(connection, scope, granularity, buckets, traffic_rows, reference),
    }


def _traffic(connection, scope, granularity, buckets, rows) -> dict[str, Any]:
    overall, per_bucket = sql.latency_percentiles(connection, scope, granularity)
    by_version: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "texts": 0})
    by_bucket: dict[datetime, dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "texts": 0, "cache_hits": 0, "by_version": {}}
    )
    for row in rows:
        for name in ("requests", "texts"):
            by_version[row["version"]][name] += row[name]
        bucket = by_bucket[row["bucket"]]
        for name in ("requests", "texts", "cache_hits"):
            bucket[name] += row[name]
        bucket["by_version"][row["version"]] = row["texts"]  # one row per bucket and version
    texts = sum(row["texts"] for row in rows)
    hits = sum(row["cache_hits"] for row in rows)
    p = overall or [None, None, None]
    return {
        "requests": sum(row["requests"] for row in rows),
        "texts": texts,
        "cache_hit_rate": _ratio(hits, texts),
        "latency_p50_ms": p[0],
        "latency_p95_ms": p[1],
        "latency_p99_ms": p[2],
        "by_version": [{"version": v, **by_version[v]} for v in sorted(by_version)],
        "buckets": [
            {
                "start": _iso(b),
                "requests": by_bucket[b]["requests"],
                "texts": by_bucket[b]["texts"],
                "cache_hit_rate": _ratio(by_bucket[b]["cache_hits"], by_bucket[b]["texts"]),
                "by_version": by_bucket[b]["by_version"],
                "latency_p50_ms": latency[0],
                "latency_p95_ms": latency[1],
                "latency_p99_ms": latency[2],
            }
            for b in buckets
            for latency in [per_bucket.get(b, [None] * 3)]
        ],
    }


def _predictions(
    connection, scope, granularity, buckets, rows, reference, references
) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    per_bucket: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for bucket, label, n in sql.label_counts(connection, scope, granularity):
        counts[label] += n
        per_bucket[bucket][label] += n
    texts = sum(row["texts"] for row in rows)
    histogram = sql.probability_histogram(connection, scope)
    versions = sorted({row["version"] for row in rows})
    rules = {v: (ref.min_probability if (ref := references(v)) else None) for v in versions}
    fallbacks = sum(sql.fallback_counts(connection, scope, rules).values())
    training = reference.training_counts if reference else None
    training_total = sum(training.values()) if training else 0
    psi = stats.psi(counts, training) if training else None
    test = stats.chi_square(counts, training) if training else None
    unseen = None
    if reference is not None and texts:
        unseen = (
            1.0 - sql.seen_in_training(connection, scope, sorted(reference.training_texts)) / texts
        )
    labels = sorted(
        set(counts) | set(training or {}), key=lambda label: (-counts.get(label, 0), label)
    )
    return {
        "texts": texts,
        "labels": [
            {
                "label": label,
                "count": counts.get(label, 0),
                "share": _ratio(counts.get(label, 0), texts),
                "training_share": _ratio(training.get(label, 0), training_total)
                if training
                else None,
            }
            for label in labels
        ],
        "psi": psi,
        "chi_square": test,
        "drift": stats.drifted(psi, test),
        "drift_rule": {"psi_at_least": stats.PSI_DRIFT, "p_value_below": stats.DRIFT_ALPHA},
        "buckets": [
            {
                "start": _iso(b),
                "texts": sum(per_bucket[b].values()),
                "psi": stats.psi(per_bucket[b], training) if training and per_bucket[b] else None,
            }
            for b in buckets
        ],
        "mean_probability": _ratio(sum(row["probability_sum"] for row in rows), texts),
        "probability_histogram": {
            "edges": [round(k / sql.PROBABILITY_BINS, 4) for k in range(sql.PROBABILITY_BINS + 1)],
            "counts": histogram,
        },
        "fallback_rate": _ratio(fallbacks, texts),
        "unseen_share": unseen,
    }


def _feedback(connection, scope, granularity, buckets, rows, reference) -> dict[str, Any]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    per_bucket: dict[datetime, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    for bucket, served, true, n in sql.feedback_counts(connection, scope, granularity):
        counts[(true, served)] += n
        per_bucket[bucket][(true, served)] += n
    items = sum(counts.values())
    texts = sum(row["texts"] for row in rows)
    figures = stats.classification(counts)
    test_f1 = reference.test_f1 if reference else {}
    per_class = figures["per_class"] if figures else []
    return {
        "items": items,
        "coverage": _ratio(items, texts),
        "accuracy": figures["accuracy"] if figures else None,
        "weighted_f1": figures["weighted_f1"] if figures else None,
        "macro_f1": figures["macro_f1"] if figures else None,
        "ece": stats.calibration_error_of_bins(
            sql.calibration_bins(connection, scope, stats.ECE_BINS)
        ),
        "test": reference.test if reference else None,
        "per_class": [{**entry, "test_f1": test_f1.get(entry["label"])} for entry in per_class],
        "confusions": figures["confusions"] if figures else [],
        "buckets": [
            {
                "start": _iso(b),
                "items": sum(per_bucket[b].values()),
                "weighted_f1": stats.weighted_f1(per_bucket[b]),
            }
            for b in buckets
        ],
    }


def _comparison(connection, request, buckets, first, references) -> dict[str, Any]:
    versions = [request.version or first, request.compare]
    figures = {}
    for version in versions:
        if version is None:
            continue
        scope = sql.Scope(request.model, request.region, request.start, request.end, version)
        rows = sql.traffic(connection, scope, request.granularity)
        full = _figures(
            connection, scope, request.granularity, buckets, rows, references(version), references
        )
        figures[version] = {
            f"{section}.{name}": full[section][name] for section, name in HEADLINE
        } | {"test": full["feedback"]["test"]}
    return {"versions": [v for v in versions if v is not None], "figures": figures}


def _busiest(rows: list[dict[str, Any]]) -> str | None:
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[row["version"]] += row["texts"]
    return max(sorted(totals), key=lambda v: totals[v]) if totals else None


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _iso(moment: datetime) -> str:
    return to_utc(moment).isoformat().replace("+00:00", "Z")
