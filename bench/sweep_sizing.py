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
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.database import Database  # noqa: E402
from bench.harness.inputs import embed_bodies, load_phrases, predict_bodies, write_bodies  # noqa: E402
from bench.harness.processes import Server  # noqa: E402
from bench.harness.results import machine_info, timestamp, write_results  # noqa: E402
from bench.harness.run import Run, app_settings, run_main  # noqa: E402
from bench.harness.wrk import ensure_wrk, run_wrk  # noqa: E402
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


def make_bodies(workdir: Path, requests: int) -> tuple[Path, Path]:
    """The API's bodies: banking77's part of the stream `make loadtest` uses
    (scripts/make_requests.py defaults); the embedder's: distinct phrases, every one a miss."""
    subprocess.run(
        [sys.executable, "scripts/make_requests.py", "--out-dir", str(workdir),
         "--requests", str(requests)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    stream = [json.loads(line) for line in (workdir / "requests.jsonl").open()]
    texts = (r["text"] for r in stream if r["model"] == MODEL)
    api_bodies = write_bodies(workdir / "api.jsonl", predict_bodies(texts))
    misses = write_bodies(workdir / "misses.jsonl", embed_bodies(load_phrases(12)))
    return api_bodies, misses


def api_point(
    run: Run, wrk: str, database: Database, embedder: Server, bodies: Path, args, grid_point
) -> dict:
    """One API configuration (workers, threads), started fresh on the shared embedder."""
    workers, threads = grid_point
    api = run.start_api(
        embedder, app_settings(database, workers, threads), [MODEL], name=f"api-{workers}x{threads}"
    )
    row = {"workers": workers, "threads": threads}
    row.update(point(api, wrk, bodies, f"/predict/{MODEL}", args, workers))
    print(f"api {workers}x{threads}: {row['requests_per_s']:.0f} req/s, "
          f"p99 {row['p99_ms']:.1f} ms, errors {row['errors']}")  # fmt: skip
    run.stop(api)
    return row


def sweep(run: Run, wrk: str, database: Database, bodies: dict[str, Path], args) -> dict:
    """Every API point (on one embedder), then every embedder point, each started fresh.

    --smoke: the embedder's one point is measured on the embedder the API points use,
    started with that configuration (one start less); a real sweep starts each fresh.
    """
    embedder_grid = parse_grid(args.embedder)
    shared = embedder_grid.pop(0) if args.smoke else None
    embedder = run.start_embedder(settings=embedder_env(shared))
    rows: dict[str, list[dict]] = {"api": [], "embedder": []}
    for grid_point in parse_grid(args.api):
        rows["api"].append(api_point(run, wrk, database, embedder, bodies["api"], args, grid_point))
    if shared:
        rows["embedder"].append(embedder_point(embedder, wrk, bodies["misses"], args, *shared))
    run.stop(embedder)
    for workers, threads in embedder_grid:
        server = run.start_embedder(
            f"embedder-{workers}x{threads}", embedder_env((workers, threads))
        )
        rows["embedder"].append(
            embedder_point(server, wrk, bodies["misses"], args, workers, threads)
        )
        run.stop(server)
    return rows


def main() -> int:
    args = parse_args()
    wrk = ensure_wrk()
    settings = Settings()
    report: dict = {
        "when": timestamp(),
        "smoke": args.smoke,
        "machine": machine_info(),
        "seconds": args.seconds,
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "api": [],
        "embedder": [],
    }
    # Its work folder goes only after a complete run: a failed one keeps the servers' logs
    # (make test runs this often).
    with Run("bench-sizing-") as run:
        api_bodies, misses = make_bodies(run.workdir, args.requests)
        database, _ = run.prepare_database(settings, smoke=args.smoke)
        report.update(sweep(run, wrk, database, {"api": api_bodies, "misses": misses}, args))

    markdown = smoke.mark(to_markdown(report), args.smoke)
    write_results(args.out, "sizing", report, markdown)
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
    run_main(main)
