"""Sizing sweep: gunicorn workers x threads for the prediction API and for the embedder service.

For each configuration the server is started fresh, driven by wrk for `--seconds`, and
stopped; requests/s, p50, p99 and errors are recorded. Load:

- the API: `POST /predict/banking77` with the realistic stream of `scripts/make_requests.py`
  (Zipf popularity, near duplicates; banking77's share of it), starting from an empty cache,
  so every configuration pays for its own misses as production does after a deploy. The
  embedder service (default settings) and a scratch PostgreSQL inference database are shared;
- the embedder: `POST /embed` with distinct phrases, every one a cache miss (its capacity).

The machine is shared and noisy (2 cores, wrk on the same cores): compare configurations
within one run. Results: bench/results/sizing.{json,md,png}.

Smoke mode (`--smoke`, what `make bench-smoke` runs): one API and one embedder configuration
(2x4, 1x8) of 1 s each, 8 wrk connections, a stream of 2000 requests, the embedder's point
measured on the embedder the API points use (started 1x8), the tiny models of bench/smoke.py
instead of the demo's, results in var/bench-smoke/results/; it fails on errors.

Usage: python bench/sweep_sizing.py [--seconds 8] [--api 1x4,2x2,2x4,2x8,3x4]
                                    [--embedder 1x8,1x32,2x16] [--out bench/results] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.bench_api import (  # noqa: E402
    REGION,
    Server,
    free_port,
    install_stop_handlers,
    machine_info,
    open_database,
    prepare_registry,
    run_wrk,
    server_env,
    start_server,
    wait_until,
)
from bench.bench_embedder import ensure_wrk, load_phrases  # noqa: E402
from dc.config import Settings  # noqa: E402

MODEL = "banking77"
STREAM_REQUESTS = 20_000  # scripts/make_requests.py's default, what `make loadtest` uses


def parse_grid(text: str) -> list[tuple[int, int]]:
    """ "2x4,3x8" -> [(2, 4), (3, 8)] (workers x threads)."""
    pairs = []
    for item in text.split(","):
        workers, threads = item.lower().split("x")
        pairs.append((int(workers), int(threads)))
    return pairs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="wrk seconds per point")
    parser.add_argument("--api", default="1x4,2x2,2x4,2x8,3x4", help="API workers x threads to try")
    parser.add_argument("--embedder", default="1x8,1x32,2x16", help="embedder grid to try")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    smoke.add_arguments(
        parser,
        "a quick check that the sweep works (see above); overrides --seconds, --api, --embedder "
        "and --connections",
    )
    args = parser.parse_args()
    args.requests = STREAM_REQUESTS
    if args.smoke:
        args.seconds, args.api, args.embedder, args.requests = 1.0, "2x4", "1x8", 2000
        args.connections = 8  # no more than request threads: none is shed (429)
        args.out = smoke.smoke_out(args.out)
    args.out = args.out or REPO / "bench" / "results"
    return args


def point(server: Server, wrk: str, bodies: Path, path: str, args, workers: int) -> dict:
    wrk_args = SimpleNamespace(
        wrk_threads=args.wrk_threads, connections=args.connections, seconds=args.seconds
    )
    figures = run_wrk(wrk, server.port, bodies, path, wrk_args, workers=workers)
    return {k: figures[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "errors", "requests")}


def embedder_env(grid_point: tuple[int, int] | None) -> dict[str, str]:
    """The DC_* settings of one embedder configuration (workers, threads); {} for defaults."""
    if grid_point is None:
        return {}
    workers, threads = grid_point
    return {"DC_EMBEDDER_WORKERS": str(workers), "DC_EMBEDDER_THREADS": str(threads)}


def embedder_point(server: Server, wrk: str, misses: Path, args, workers: int, threads: int):
    """One embedder point (every phrase a miss) on `server`, running `workers` x `threads`."""
    row = {"workers": workers, "threads": threads}
    row.update(point(server, wrk, misses, "/embed", args, workers))
    print(f"embedder {workers}x{threads}: {row['requests_per_s']:.0f} req/s, "
          f"p99 {row['p99_ms']:.1f} ms, errors {row['errors']}")  # fmt: skip
    return row


def to_markdown(report: dict) -> str:
    lines = [
        f"Run {report['when']} on {report['machine']['machine']} ({report['machine']['cpus']} "
        f"CPUs, shared by wrk and the servers); wrk -t{report['wrk_threads']} "
        f"-c{report['connections']}, {report['seconds']:g} s per point.",
        "",
    ]
    for part, what in (
        ("api", "API, realistic stream from an empty cache (`POST /predict/banking77`)"),
        ("embedder", "embedder, every phrase a miss (`POST /embed`)"),
    ):
        lines += [
            f"| {what}: workers x threads | req/s | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in report[part]:
            lines.append(
                f"| {row['workers']} x {row['threads']} | {row['requests_per_s']:.0f} | "
                f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, part in zip(axes, ("api", "embedder"), strict=True):
        rows = report[part]
        labels = [f"{r['workers']}x{r['threads']}" for r in rows]
        ax.bar(labels, [r["requests_per_s"] for r in rows], color="tab:blue")
        ax.set_title(f"{part}: requests/s (bars) and p99 ms (line)")
        ax.set_xlabel("workers x threads")
        ax.set_ylabel("requests/s")
        twin = ax.twinx()
        twin.plot(labels, [r["p99_ms"] for r in rows], color="tab:red", marker="o")
        twin.set_ylabel("p99 ms")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    args = parse_args()
    install_stop_handlers()
    wrk = ensure_wrk()
    settings = Settings()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sizing-"))
    servers: list[Server] = []
    database = None
    gunicorn = [sys.executable, "-m", "gunicorn"]
    report: dict = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": args.smoke,
        "machine": machine_info(),
        "seconds": args.seconds,
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "api": [],
        "embedder": [],
    }
    try:
        # The stream `make loadtest` uses (scripts/make_requests.py defaults), banking77's part.
        subprocess.run(
            [sys.executable, "scripts/make_requests.py", "--out-dir", str(workdir),
             "--requests", str(args.requests)],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        stream = [json.loads(line) for line in (workdir / "requests.jsonl").open()]
        api_bodies = workdir / "api.jsonl"
        api_bodies.write_text(
            "".join(json.dumps({"text": r["text"]}) + "\n" for r in stream if r["model"] == MODEL)
        )
        misses = workdir / "misses.jsonl"
        misses.write_text("".join(json.dumps({"texts": [p]}) + "\n" for p in load_phrases(12)))

        registry_file = smoke.ensure_models() if args.smoke else None
        database = open_database(workdir)
        prepare_registry(database, workdir, settings, registry_file)

        embedder_grid = parse_grid(args.embedder)
        # --smoke: the embedder's one point is measured on the embedder the API points use,
        # started with that configuration (one start less); a real sweep starts each fresh.
        shared = embedder_grid.pop(0) if args.smoke else None
        embedder_port = free_port()
        embedder = start_server(
            "embedder",
            [*gunicorn, "-c", "embedder/gunicorn.conf.py"],
            {**server_env(), "DC_EMBEDDER_PORT": str(embedder_port), **embedder_env(shared)},
            embedder_port,
            workdir,
        )
        servers.append(embedder)
        wait_until(embedder, "/ready", lambda status, _: status == 200)

        for workers, threads in parse_grid(args.api):
            port = free_port()
            env = {
                **server_env(),
                "DC_API_WORKERS": str(workers),
                "DC_API_THREADS": str(threads),
                "DC_API_PORT": str(port),
                "DC_EMBEDDER_MODE": "remote",
                "DC_EMBEDDER_URL": f"http://127.0.0.1:{embedder_port}",
                "DC_DATABASE_URL": database.url,
                "DC_SPOOL_DIR": str(workdir / f"spool-{port}"),
                "DC_SERVING_REGION": REGION,
                "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"metrics-{port}"),
            }
            api = start_server(
                f"api-{workers}x{threads}", [*gunicorn, "-c", "api/gunicorn.conf.py"], env, port,
                workdir,
            )  # fmt: skip
            servers.append(api)
            wait_until(api, "/ready", lambda s, b: s == 200 and MODEL in json.loads(b)["models"])
            row = {"workers": workers, "threads": threads}
            row.update(point(api, wrk, api_bodies, f"/predict/{MODEL}", args, workers))
            print(f"api {workers}x{threads}: {row['requests_per_s']:.0f} req/s, "
                  f"p99 {row['p99_ms']:.1f} ms, errors {row['errors']}")  # fmt: skip
            report["api"].append(row)
            api.stop()
            servers.remove(api)
        if shared:
            report["embedder"].append(embedder_point(embedder, wrk, misses, args, *shared))
        embedder.stop()
        servers.remove(embedder)

        for workers, threads in embedder_grid:
            port = free_port()
            env = {
                **server_env(),
                **embedder_env((workers, threads)),
                "DC_EMBEDDER_PORT": str(port),
            }
            server = start_server(
                f"embedder-{workers}x{threads}",
                [*gunicorn, "-c", "embedder/gunicorn.conf.py"],
                env,
                port,
                workdir,
            )
            servers.append(server)
            wait_until(server, "/ready", lambda status, _: status == 200)
            report["embedder"].append(embedder_point(server, wrk, misses, args, workers, threads))
            server.stop()
            servers.remove(server)
    finally:
        for server in reversed(servers):
            server.stop()
        if database is not None and database.drop is not None:
            database.drop()
    # Only after a complete run: a failed one keeps the servers' logs (make test runs this often).
    shutil.rmtree(workdir, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sizing.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = smoke.mark(to_markdown(report), args.smoke)
    (args.out / "sizing.md").write_text(markdown)
    plot(report, args.out / "sizing.png")
    print()
    print(markdown)
    print(f"saved {args.out}/sizing.json, sizing.md and sizing.png")
    if args.smoke:
        smoke.require_no_errors(
            {f"{part} {r['workers']}x{r['threads']}": r for part in ("api", "embedder")
             for r in report[part]}
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
