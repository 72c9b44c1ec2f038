"""Benchmark the encoder and the embedder service in one run; print and save the figures.

Measures, on short phrases from the project's datasets:
  1. the raw encoder on the service's backend (DC_ENCODER_BACKEND, in this process) in
     phrases/s at batch 1, 8, 32 and 128;
  2. the service under gunicorn (its own process, the default settings) with 1, 4, 16 and 64
     concurrent clients each sending one phrase per request: all misses, then 90% repeats;
  3. the cache-hit latency inside the service (its Server-Timing `total`), p50 and p99;
  4. batching settings side by side, 16 clients and 1 client, all misses: one encoder call at a
     time on TensorFlow's default threads, with and without a 10 ms busy window
     (DC_BATCH_WAIT_MS), against DC_ENCODER_WORKERS=2 (single-threaded ops) with and without it.

The load comes from wrk (C, epoll; Debian package `wrk`, installed when missing) driving
bench/embed.lua, so the client costs little of the machine's two cores. Each point gets its own
file of distinct phrases, so "all misses" really misses. Ratios are what to compare across runs
(this machine is shared and noisy): the service at 16 clients, all misses, against the raw model
at batch 32 of the same run.

Smoke mode (`--smoke`, what `make bench-smoke` runs): 1 s per point, the raw model at batch 32
only, 16 clients only, and one service, on a free port, started with the last batching
configuration (whose sweep point it also measures); results in var/bench-smoke/results/; it
fails on errors, never on the targets.

Usage: python bench/bench_embedder.py [--seconds 5] [--out bench/results] [--port 18501] [--smoke]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.client import HOST  # noqa: E402
from bench.harness.inputs import embed_bodies, load_phrases, write_bodies  # noqa: E402
from bench.harness.processes import free_port  # noqa: E402
from bench.harness.results import timestamp, write_results  # noqa: E402
from bench.harness.wrk import ensure_wrk, wrk_json  # noqa: E402
from dc.config import Settings  # noqa: E402
from dc.nlp.encoder import load_encoder  # noqa: E402

RAW_BATCHES = (1, 8, 32, 128)
CONCURRENCY = (1, 4, 16, 64)
REPEAT_SHARE = 0.9
# One encoder call at a time on every core: the runtime's own threads (TF's or ONNX Runtime's).
_ONE_CALL = {
    "DC_ENCODER_WORKERS": "1",
    "DC_TF_INTRA_OP_THREADS": "0",
    "DC_TF_INTER_OP_THREADS": "0",
    "DC_ONNX_INTRA_OP_THREADS": "0",
}
BATCHING_CONFIGS = (
    {**_ONE_CALL, "DC_BATCH_WAIT_MS": "0"},
    {**_ONE_CALL, "DC_BATCH_WAIT_MS": "10"},
    {"DC_ENCODER_WORKERS": "2", "DC_BATCH_WAIT_MS": "0"},
    {"DC_ENCODER_WORKERS": "2", "DC_BATCH_WAIT_MS": "10"},
)  # fmt: skip
HOT_PHRASES = 200
MAX_WORDS = 10
CACHE_HIT_REQUESTS = 2000
# --smoke: one point of each kind (the checks compare 16 clients with raw batch 32).
SMOKE_RAW_BATCHES = (32,)
SMOKE_CONCURRENCY = (16,)
# Its one batching configuration is the service the other points measure: one start less.
SMOKE_BATCHING_CONFIG = BATCHING_CONFIGS[-1]
SMOKE_CACHE_HIT_REQUESTS = 200


def raw_rate(encoder, phrases: list[str], batch: int, seconds: float) -> dict:
    """Phrases/s of the bare encoder at one batch size (median of trials of 1 s, or of a third
    of `seconds` when that is shorter)."""
    encoder.encode(phrases[:batch])  # warm this shape family
    rates, offset = [], 0
    trial_s = min(1.0, seconds / 3)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        done, trial_start = 0, time.perf_counter()
        while time.perf_counter() - trial_start < trial_s:
            chunk = [phrases[(offset + i) % len(phrases)] for i in range(batch)]
            offset += batch
            encoder.encode(chunk)
            done += batch
        rates.append(done / (time.perf_counter() - trial_start))
    return {"phrases_per_s": statistics.median(rates), "trials": len(rates)}


def bench_raw(encoder, phrases: list[str], seconds: float, batches=RAW_BATCHES) -> dict[int, dict]:
    """Phrases/s of the bare encoder at each of `batches`."""
    results = {}
    for batch in batches:
        results[batch] = raw_rate(encoder, phrases, batch, seconds)
        print(f"raw encoder  batch {batch:>3}: {results[batch]['phrases_per_s']:8.1f} phrases/s")
    return results


class Phrases:
    """Hands out distinct phrases, so that no two benchmark points share a cache entry."""

    def __init__(self, pool: list[str]) -> None:
        self._pool = pool
        self._next = 0

    def take(self, count: int) -> list[str]:
        taken = self._pool[self._next : self._next + count]
        self._next += len(taken)
        if len(taken) < count:
            print(f"  note: phrase pool exhausted; {count - len(taken)} phrases will repeat")
            taken += random.Random(count).choices(self._pool, k=count - len(taken))
        return taken


def wrk_round(wrk: str, port: int, bodies: Path, clients: int, seconds: float) -> dict:
    """`clients` connections, each one request at a time with one phrase, for `seconds`."""
    threads = min(2, clients)
    command = [
        wrk, f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s",
        "-s", str(REPO / "bench" / "embed.lua"), f"http://{HOST}:{port}", "--",
        str(bodies), str(threads),
    ]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    figures = wrk_json(output)
    return {
        "clients": clients,
        "requests": figures["requests"],
        "errors": figures["errors"],
        "requests_per_s": figures["requests"] / figures["duration_s"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "wrapped": figures["wrapped"],
    }


def measure_point(wrk, port, workdir, phrases, clients, seconds, hot=(), share=0.0) -> dict:
    """Warm the connections for 1 s, then measure; fresh phrases for each, repeats from `hot`.

    The body files hold more requests than the service can answer in the time (a miss costs
    at least ~1.5 ms of encoder time; a repeat at least ~0.3 ms of HTTP), so nothing wraps.
    """
    rng = random.Random(clients)
    rate = min(700, 150 * clients) if share == 0 else 3500

    def stream(count: int) -> list[str]:
        fresh = iter(phrases.take(int(count * (1 - share)) + 50))
        return [rng.choice(hot) if rng.random() < share else next(fresh) for _ in range(count)]

    warm = write_bodies(workdir / "warm.jsonl", embed_bodies(stream(rate)))
    wrk_round(wrk, port, warm, clients, 1.0)
    bodies = write_bodies(workdir / "bodies.jsonl", embed_bodies(stream(int(rate * seconds))))
    result = wrk_round(wrk, port, bodies, clients, seconds)
    result["repeat_share"] = share
    return result


def start_service(port: int, settings_env: dict[str, str]) -> subprocess.Popen:
    """Start the embedder under gunicorn with the default settings plus `settings_env`."""
    env = {
        **os.environ,
        # No phrase-cache snapshot: every point starts with an empty cache.
        "DC_CACHE_SNAPSHOT": "",
        **settings_env,
        "DC_EMBEDDER_PORT": str(port),
        "DC_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "embedder/gunicorn.conf.py"], cwd=REPO, env=env
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://{HOST}:{port}/ready", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        # Also after a 503: polling at once would take CPU from the model being loaded.
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the embedder service did not become ready")


def bench_cache_hit(port: int, phrase: str, count: int = CACHE_HIT_REQUESTS) -> dict:
    """Sequential requests for one cached phrase: the service's own time and the client's."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Content-Type": "application/json", "Accept": "application/octet-stream"}
    body = json.dumps({"texts": [phrase]})
    inside, outside = [], []
    for i in range(count + 100):
        sent = time.perf_counter()
        conn.request("POST", "/embed", body, headers)
        response = conn.getresponse()
        response.read()
        took = time.perf_counter() - sent
        if i < 100:  # warm-up
            continue
        assert response.headers["X-Embedding-Cached"] == "1"
        timing = dict(part.split(";dur=") for part in response.headers["Server-Timing"].split(", "))
        inside.append(float(timing["total"]))
        outside.append(took * 1000)
    conn.close()
    return {
        "requests": count,
        "service_p50_ms": float(np.percentile(inside, 50)),
        "service_p99_ms": float(np.percentile(inside, 99)),
        "client_p50_ms": float(np.percentile(outside, 50)),
        "client_p99_ms": float(np.percentile(outside, 99)),
    }


def to_markdown(report: dict) -> str:
    raw, hit, checks = report["raw"], report["cache_hit"], report["checks"]
    lines = [
        f"Run {report['when']} on {report['machine']} ({report['cpus']} CPUs); phrases of "
        f"{report['phrase_words']} words; {report['seconds']:g} s per point; load from wrk.",
        "",
        "| raw SavedModel batch | phrases/s |",
        "|---:|---:|",
        *[f"| {b} | {row['phrases_per_s']:.0f} |" for b, row in raw.items()],
        "",
        "| clients | all misses: req/s | p50 ms | p99 ms | 90% repeats: req/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    service = report["service"]
    for miss, mixed in zip(service["misses"], service["repeats_90"], strict=True):
        lines.append(
            f"| {miss['clients']} | {miss['requests_per_s']:.0f} | {miss['p50_ms']:.1f} | "
            f"{miss['p99_ms']:.1f} | {mixed['requests_per_s']:.0f} | {mixed['p50_ms']:.1f} | "
            f"{mixed['p99_ms']:.1f} |"
        )
    lines += [
        "",
        "| batching settings | 16 clients: req/s | p50 ms | mean batch | 1 client: req/s "
        "| p50 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["batching_sweep"]:
        many, one = row["clients_16"], row["clients_1"]
        lines.append(
            f"| {row['config']} | {many['requests_per_s']:.0f} | {many['p50_ms']:.1f} | "
            f"{row['mean_batch_16']:.1f} | {one['requests_per_s']:.0f} | {one['p50_ms']:.1f} |"
        )
    ratio_mark = "met" if checks["ratio_ok"] else "NOT met"
    hit_mark = "met" if checks["cache_hit_ok"] else "NOT met"
    lines += [
        "",
        f"Cache hit inside the service: p50 {hit['service_p50_ms']:.3f} ms, "
        f"p99 {hit['service_p99_ms']:.3f} ms "
        f"(client round trip p50 {hit['client_p50_ms']:.3f} ms).",
        "",
        f"Service at 16 clients, all misses / raw batch 32 (mean of "
        f"{raw['32']['phrases_per_s']:.0f} before and "
        f"{report['raw_32_after_service_16']['phrases_per_s']:.0f} right after that point): "
        f"**{checks['ratio_16_misses_to_raw_32']:.2f}** (target >= 0.75: {ratio_mark}); "
        f"cache-hit p50 under 1 ms: {hit_mark}.",
    ]
    return "\n".join(lines) + "\n"


def batch_counters(port: int) -> tuple[float, float]:
    """(batches, texts) encoded so far, from the service's Prometheus metrics."""
    values = {}
    for line in requests.get(f"http://{HOST}:{port}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("embedder_batch_size_count", "embedder_batch_size_sum"):
            values[name] = float(value)
    return values["embedder_batch_size_count"], values["embedder_batch_size_sum"]


def measure_batching(wrk, port, workdir, phrases: Phrases, seconds, config) -> dict:
    """16 clients and 1 client, all misses, on the service running with batching `config`."""
    batches0, texts0 = batch_counters(port)
    many = measure_point(wrk, port, workdir, phrases, 16, seconds)
    batches1, texts1 = batch_counters(port)
    one = measure_point(wrk, port, workdir, phrases, 1, seconds)
    label = ", ".join(f"{k.removeprefix('DC_')}={v}" for k, v in config.items())
    mean_batch = (texts1 - texts0) / max(batches1 - batches0, 1)
    print(
        f"{label}: 16 clients {many['requests_per_s']:6.1f} req/s (mean batch "
        f"{mean_batch:.1f}), 1 client {one['requests_per_s']:6.1f} req/s "
        f"p50 {one['p50_ms']:.1f} ms"
    )
    return {"config": label, "clients_16": many, "clients_1": one, "mean_batch_16": mean_batch}


def sweep_batching(wrk, port, workdir, pool, seconds) -> list[dict]:
    """16 clients and 1 client, all misses, for each batching configuration, each on a fresh
    service with otherwise default settings."""
    rows = []
    for config in BATCHING_CONFIGS:
        proc = start_service(port, config)
        try:
            rows.append(measure_batching(wrk, port, workdir, Phrases(pool), seconds, config))
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measurement time per point (default 5)"
    )
    parser.add_argument(
        "--port",
        type=int,
        help="port for the service under test (default 18501; a free one with --smoke)",
    )
    smoke.add_arguments(
        parser, "a quick check that the benchmark works (see above); overrides --seconds"
    )
    args = parser.parse_args()
    raw_batches, concurrency = RAW_BATCHES, CONCURRENCY
    hit_requests = CACHE_HIT_REQUESTS
    if args.smoke:
        args.seconds = 1.0
        args.out = smoke.smoke_out(args.out)
        args.port = args.port or free_port()  # make test may run beside another benchmark
        raw_batches, concurrency = SMOKE_RAW_BATCHES, SMOKE_CONCURRENCY
        hit_requests = SMOKE_CACHE_HIT_REQUESTS
    args.out = args.out or REPO / "bench" / "results"
    args.port = args.port or 18501

    wrk = ensure_wrk()
    settings = Settings()
    pool = load_phrases(MAX_WORDS)
    print(
        f"{len(pool)} distinct phrases of 3-{MAX_WORDS} words; encoder {settings.embedder_handle}"
    )

    # The service's backend (DC_ENCODER_BACKEND), on every core; bench/bench_backends.py
    # compares the backends.
    encoder = load_encoder(settings.embedder_handle, settings.encoder_backend)
    raw = bench_raw(encoder, pool, args.seconds, raw_batches)

    workdir = Path(tempfile.mkdtemp(prefix="bench-embedder-"))
    port = args.port
    proc = start_service(port, SMOKE_BATCHING_CONFIG if args.smoke else {})
    try:
        phrases = Phrases(pool)
        hot = phrases.take(HOT_PHRASES)
        for start in range(0, HOT_PHRASES, 100):
            requests.post(
                f"http://{HOST}:{port}/embed",
                json={"texts": hot[start : start + 100]},
                timeout=60,
            )
        misses, repeats = [], []
        for clients in concurrency:
            for share, bucket in ((0.0, misses), (REPEAT_SHARE, repeats)):
                result = measure_point(
                    wrk, port, workdir, phrases, clients, args.seconds, hot, share
                )
                bucket.append(result)
                if clients == 16 and share == 0.0:
                    # The baseline again, right after the point it is compared with, so that a
                    # machine slowing down or speeding up mid-run does not skew the ratio.
                    raw_after = raw_rate(encoder, pool, 32, args.seconds)
                    print(f"raw encoder  batch  32 again: {raw_after['phrases_per_s']:8.1f}")
                print(
                    f"service {clients:>2} clients, {int(share * 100):>2}% repeats: "
                    f"{result['requests_per_s']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
                    f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}"
                )
        hit = bench_cache_hit(port, hot[0], hit_requests)
        print(f"cache hit inside the service: p50 {hit['service_p50_ms']:.3f} ms")
        info = requests.get(f"http://{HOST}:{port}/info", timeout=10).json()
        if args.smoke:
            batching = [
                measure_batching(wrk, port, workdir, phrases, args.seconds, SMOKE_BATCHING_CONFIG)
            ]
    finally:
        proc.terminate()
        proc.wait(30)
    if not args.smoke:
        batching = sweep_batching(wrk, port, workdir, pool, args.seconds)
    shutil.rmtree(workdir, ignore_errors=True)

    baseline = (raw[32]["phrases_per_s"] + raw_after["phrases_per_s"]) / 2
    ratio = misses[concurrency.index(16)]["requests_per_s"] / baseline
    report = {
        "when": timestamp(),
        "smoke": args.smoke,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "phrase_words": f"3-{MAX_WORDS}",
        "embedder": {k: info[k] for k in ("model", "backend", "fingerprint", "batching")},
        "raw": {str(b): v for b, v in raw.items()},
        "raw_32_after_service_16": raw_after,
        "baseline_raw_32": baseline,
        "service": {"misses": misses, "repeats_90": repeats},
        "cache_hit": hit,
        "batching_sweep": batching,
        "checks": {
            "ratio_16_misses_to_raw_32": ratio,
            "ratio_ok": ratio >= 0.75,
            "cache_hit_ok": hit["service_p50_ms"] < 1.0,
        },
    }
    markdown = smoke.mark(to_markdown(report), args.smoke)
    write_results(args.out, "embedder", report, markdown)
    print()
    print(markdown)
    if args.smoke:
        points = {f"{r['clients']} clients, {r['repeat_share']:.0%} repeats": r
                  for r in misses + repeats}  # fmt: skip
        for row in batching:
            points[f"{row['config']}, 16 clients"] = row["clients_16"]
            points[f"{row['config']}, 1 client"] = row["clients_1"]
        smoke.require_no_errors(points)


if __name__ == "__main__":
    main()
