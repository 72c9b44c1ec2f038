"""HTTP from the benchmark's side: single calls, the API's Prometheus counters, the warm-up.

http.client on purpose: no connection pool between the benchmark and what it measures, and a
kept connection stays with the gunicorn worker that accepted it (how the warm-up reaches
every worker).
"""

from __future__ import annotations

import http.client
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.harness.processes import Server

HOST = "127.0.0.1"
VERIFY_REPEATS = 3  # fresh-connection requests per phrase after the pinned warm-up


def http_call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 30.0,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request, on `conn` (kept open) or on a fresh connection (closed after)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, data, headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        if own:
            conn.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """The API's Prometheus samples (all workers: multiprocess mode)."""
    status, _, body = http_call(port, "GET", "/metrics", timeout=10)
    if status != 200:
        raise SystemExit(f"/metrics answered {status}")
    samples = []
    for line in body.decode().splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def metric(samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (a value may be a predicate)."""
    total = 0.0
    for sample_name, sample_labels, value in samples:
        if sample_name != name:
            continue
        if all(
            (want(sample_labels.get(key, "")) if callable(want) else sample_labels.get(key) == want)
            for key, want in labels.items()
        ):
            total += value
    return total


@dataclass
class ApiCounters:
    """The /metrics figures the benchmark follows, at one moment."""

    hits: float
    misses: float
    ok: float  # 2xx answers of /predict/<model>
    not_ok: float
    stage_sum: dict[str, float] = field(default_factory=dict)
    stage_count: dict[str, float] = field(default_factory=dict)
    log_rows: dict[str, float] = field(default_factory=dict)
    queue_depth: float = 0.0

    @classmethod
    def read(cls, port: int, model: str) -> ApiCounters:
        samples = scrape(port)
        route = "/predict/<model>"
        stages = ("parse", "embed", "score", "log", "total")
        return cls(
            hits=metric(samples, "api_embedding_cache_total", result="hit"),
            misses=metric(samples, "api_embedding_cache_total", result="miss"),
            ok=metric(
                samples,
                "api_requests_total",
                endpoint=route,
                model=model,
                status=lambda s: s.startswith("2"),
            ),
            not_ok=metric(
                samples,
                "api_requests_total",
                endpoint=route,
                status=lambda s: not s.startswith("2"),
            ),
            stage_sum={s: metric(samples, "api_stage_seconds_sum", stage=s) for s in stages},
            stage_count={s: metric(samples, "api_stage_seconds_count", stage=s) for s in stages},
            log_rows={
                e: metric(samples, "api_inference_log_rows_total", event=e)
                for e in ("enqueued", "written", "spooled", "replayed", "dropped")
            },
            queue_depth=metric(samples, "api_inference_log_queue_depth"),
        )

    def minus(self, earlier: ApiCounters) -> dict[str, Any]:
        hits, misses = self.hits - earlier.hits, self.misses - earlier.misses
        stage_ms = {}
        for stage, total in self.stage_sum.items():
            count = self.stage_count[stage] - earlier.stage_count.get(stage, 0.0)
            if count:
                stage_ms[stage] = 1000 * (total - earlier.stage_sum.get(stage, 0.0)) / count
        return {
            "cache_hits": int(hits),
            "cache_misses": int(misses),
            "cache_hit_share": hits / (hits + misses) if hits + misses else 0.0,
            "api_2xx": int(self.ok - earlier.ok),
            "api_non2xx": int(self.not_ok - earlier.not_ok),
            "stage_mean_ms": stage_ms,
            "log_rows": {
                k: int(v - earlier.log_rows.get(k, 0.0)) for k, v in self.log_rows.items()
            },
        }


# --- warm-up ------------------------------------------------------------------------------------


def _pin_workers(api: Server, workers: int) -> dict[str, http.client.HTTPConnection]:
    """One kept connection per API worker, by the worker's name (X-Served-By).

    /ready answered from one worker; the others may still be booting. Open connections (kept
    open, so each stays with the worker that accepted it) until every worker has taken one
    and says it is ready on it.
    """
    pinned: dict[str, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    deadline = time.monotonic() + 90
    while len(pinned) < workers and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, api.port, timeout=30)
        status, headers, _ = http_call(api.port, "GET", "/ready", conn=conn)
        who = headers.get("X-Served-By", "?")
        if status == 200 and who not in pinned:
            pinned[who] = conn
        else:
            spare.append(conn)
            time.sleep(0.02)
        if len(spare) > 100:  # do not hold more than the workers' threads can keep alive
            for old in spare:
                old.close()
            spare.clear()
    for conn in spare:
        conn.close()
    if len(pinned) < workers:
        for conn in pinned.values():
            conn.close()
        raise SystemExit(
            f"only {len(pinned)} of {workers} API workers took a connection "
            f"within 90 s:\n{api.log_tail()}"
        )
    return pinned


def warm_api(api: Server, model: str, phrases: list[str], workers: int) -> dict:
    """Put every phrase in every worker's cache, then check every answer is a cache hit."""
    path = f"/predict/{model}"
    pinned = _pin_workers(api, workers)
    first_misses = 0
    try:
        for phrase in phrases:  # interleaved, so no pinned connection idles into keep-alive
            for who, conn in pinned.items():
                status, _, body = http_call(api.port, "POST", path, {"text": phrase}, conn=conn)
                if status != 200:
                    raise SystemExit(f"warm-up: {path} answered {status} on {who}: {body[:300]!r}")
                first_misses += not json.loads(body)["cached"]
    finally:
        for conn in pinned.values():
            conn.close()
    seen: dict[str, int] = {}
    not_cached = 0
    for _ in range(VERIFY_REPEATS):
        for phrase in phrases:
            status, headers, body = http_call(api.port, "POST", path, {"text": phrase})
            if status != 200:
                raise SystemExit(f"warm-up check: {path} answered {status}: {body[:300]!r}")
            seen[headers["X-Served-By"]] = seen.get(headers["X-Served-By"], 0) + 1
            not_cached += not json.loads(body)["cached"]
    if not_cached:
        raise SystemExit(f"warm-up check: {not_cached} answers were not cache hits")
    return {
        "workers_warmed": sorted(pinned),
        "first_pass_misses": first_misses,
        "check_requests": VERIFY_REPEATS * len(phrases),
        "check_not_cached": not_cached,
        "check_answers_by_worker": seen,
    }
