"""Design benchmark: the service against a bare echo and a naive baseline, side by side, in one run.

Points, all driven by the same wrk script (bench/predict.lua), the same wrk threads and
connections, the same gunicorn settings (api/gunicorn.conf.py, DC_API_WORKERS x DC_API_THREADS):
  (a) echo   bare Flask `POST /echo` (bench/echo_app.py, as bench/bench_api.py);
  (b) warm   the service (API in remote mode + embedder service) on a realistic Zipf stream
             (scripts/make_requests.py), after the stream's phrases were sent once to every API
             worker (so every worker's caches hold them);
  (c) cold   the same stream right after restarting the API and the embedder (empty caches;
             this embedder neither reads nor writes a phrase-cache snapshot);
  (d) naive  bench/naive_app.py: per request, the encoder in process (one encode([text])),
             the Keras head (`model(x, training=False)`) and one committed INSERT;
  (e) memory the stack's total RSS and PSS (API master + workers, embedder master + worker),
             with 21 extra promoted models m01..m21 (copies of the demo versions: a manifest
             renamed, the same weights files through a symlink) plus banking77 and clinc150
             loaded, against 21 x ONE naive worker's RSS
             (one process holding the encoder and one Keras head; measured, then multiplied);
  (f) restart the same stream right after restarting the API and the embedder again, where the
             embedder reads the phrase-cache snapshot that (b)'s embedder wrote when it was
             stopped (SIGTERM: gunicorn's worker_exit writes DC_CACHE_SNAPSHOT), and each API
             worker fills its RemoteEmbedder's phrase cache from the embedder's at its start
             (GET /snapshot, DC_CLIENT_WARM_START); its prediction caches start empty. Its
             first `--seconds` after the restart, measured as the cold point is.

The stream: make_requests.py --requests N --distinct D; its banking77 requests (about 60%), in
stream order, are the bodies POSTed to /predict/banking77 (predict.lua takes one path), and the
same bodies go to /echo and to the naive app. wrk cycles through the file when a round needs
more requests than it holds. The database is a scratch PostgreSQL database (the harness's
open_database: DC_BENCH_DATABASE_URL, else the local server, else SQLite, said loudly),
migrated and given the promoted demo rows of var/dc.sqlite; the service and the naive app both
log every prediction to its `inferences` table.

Ratios: (b)/(d) target >= 10, (b)/(a) target >= 0.5, memory stack / (21 x naive) target < 0.25,
(f)/(b) target >= 0.8 (a restart with the snapshot against the warm service).

Output: a table on stdout, bench/results/design.json, design.md and design.png (matplotlib).
Every process started is stopped at the end (SIGTERM, then SIGKILL), also on Ctrl-C. About
2-3 minutes with the defaults. Exit status 0 when all four targets are met, 1 otherwise.

Smoke mode (`--smoke`, what `make bench-smoke` runs): 1 s per point, a stream of 1000 requests
over 100 phrases per model, 2 extra models, one gunicorn worker per app (each naive worker
loads the encoder) and as many wrk connections as its threads, the tiny models of
bench/smoke.py instead of the demo's, results in var/bench-smoke/results/; it fails on errors,
never on the targets.

Usage: python bench/bench_design.py [--seconds 10] [--requests 20000] [--distinct 2000]
                                    [--wrk-threads 2] [--connections 16] [--copies 21]
                                    [--out bench/results] [--keep-logs] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import psutil  # the bench extra: memory of the served stacks

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.client import ApiCounters, http_call, warm_api  # noqa: E402
from bench.harness.database import REGION, Database, count_rows, record_and_promote  # noqa: E402
from bench.harness.processes import Server, wait_ready  # noqa: E402
from bench.harness.results import machine_info, timestamp, write_results  # noqa: E402
from bench.harness.run import Run, app_settings, run_main  # noqa: E402
from bench.harness.wrk import ensure_wrk, run_wrk, warm_round_args  # noqa: E402
from dc.config import Settings  # noqa: E402

MODEL = "banking77"
PATH = f"/predict/{MODEL}"
NAIVE_APP = "bench.naive_app:create_app()"
TARGETS = {
    "warm_over_naive": 10.0,
    "warm_over_echo": 0.5,
    "memory_ratio": 0.25,
    "restart_over_warm": 0.8,
}
SNAPSHOT = "embedder-snapshot.npz"  # in the run's work folder: (b)'s embedder writes, (f) reads


# --- set-up ---------------------------------------------------------------------------------


def make_stream(workdir: Path, requests: int, distinct: int) -> tuple[Path, list[str], int]:
    """Write the stream with scripts/make_requests.py; return the bodies file of MODEL's
    requests, its distinct texts and the stream's total length."""
    out = workdir / "stream"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_requests.py"), "--out-dir", str(out),
         "--requests", str(requests), "--distinct", str(distinct)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    lines = (out / "requests.tsv").read_text().splitlines()
    bodies = [body for model, body in (line.split("\t", 1) for line in lines) if model == MODEL]
    path = workdir / "bodies.jsonl"
    path.write_text("".join(b + "\n" for b in bodies))
    texts = list(dict.fromkeys(json.loads(b)["text"] for b in bodies))
    return path, texts, len(lines)


def register_copies(
    database: Database, copies: int, settings: Settings, workdir: Path
) -> list[str]:
    """Register and promote m01..mNN: copies of the demo models' promoted rows (same folders)."""
    from persistence import registry
    from persistence.db import make_engine, session_factory

    engine = make_engine(database.url)
    factory = session_factory(engine)
    names = []
    try:
        with factory() as session:
            sources = [
                registry.promoted_version(session, m, REGION) for m in ("banking77", "clinc150")
            ]
        for number in range(1, copies + 1):
            row = sources[(number - 1) % len(sources)]
            name = f"m{number:02d}"
            # The model store checks that a folder's manifest names the registry's model: each
            # copy gets its own folder, a manifest with its name and a symlink to the same
            # models/ folder (the same weights files).
            source = Path(url2pathname(urlparse(row.artifact_uri).path))
            folder = workdir / "artifacts" / REGION / name / row.version
            folder.mkdir(parents=True)
            manifest = json.loads((source / "manifest.json").read_text())
            manifest["name"] = name
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
            (folder / "models").symlink_to(source / "models")
            record_and_promote(factory, name, row, folder.as_uri(), settings)
            names.append(name)
    finally:
        engine.dispose()
    return names


# --- memory -----------------------------------------------------------------------------------


def _proc_kb(pid: int, path: str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def group_memory(server: Server) -> list[dict]:
    """RSS and PSS (kB) of the server's master and every child process."""
    master = psutil.Process(server.proc.pid)
    procs = [master, *master.children(recursive=True)]
    rows = []
    for proc in procs:
        rows.append(
            {
                "pid": proc.pid,
                "role": "master" if proc.pid == master.pid else "worker",
                "rss_kb": _proc_kb(proc.pid, "status", "VmRSS") or 0,
                "pss_kb": _proc_kb(proc.pid, "smaps_rollup", "Pss"),
            }
        )
    return rows


def _mb(kb: float | None) -> float | None:
    return None if kb is None else kb / 1024


def memory_summary(stack_procs: dict, naive_procs: list[dict], models: int) -> dict:
    """(e): the stack's total RSS and PSS against 21 x one naive worker's."""
    stack_rows = stack_procs["api"] + stack_procs["embedder"]
    stack_rss = sum(r["rss_kb"] for r in stack_rows)
    stack_pss = sum(r["pss_kb"] or 0 for r in stack_rows)
    naive_worker = max((r for r in naive_procs if r["role"] == "worker"), key=lambda r: r["rss_kb"])
    memory = {
        "stack_models": models,
        "api_workers": sum(r["role"] == "worker" for r in stack_procs["api"]),
        "stack_processes": stack_procs,
        "stack_rss_mb": _mb(stack_rss),
        "stack_pss_mb": _mb(stack_pss),
        "naive_processes": naive_procs,
        "naive_rss_mb": _mb(naive_worker["rss_kb"]),
        "naive_pss_mb": _mb(naive_worker["pss_kb"] or 0),
        "naive21_rss_mb": 21 * _mb(naive_worker["rss_kb"]),
        "naive21_pss_mb": 21 * _mb(naive_worker["pss_kb"] or 0),
        "note": "naive: ONE worker process (encoder + one Keras head) measured, multiplied by 21",
    }
    memory["rss_ratio"] = memory["stack_rss_mb"] / memory["naive21_rss_mb"]
    memory["pss_ratio"] = (
        memory["stack_pss_mb"] / memory["naive21_pss_mb"] if memory["naive21_pss_mb"] else 0.0
    )
    return memory


# --- points -----------------------------------------------------------------------------------


def measure(name: str, wrk: str, port: int, bodies: Path, path: str, args) -> dict:
    result = run_wrk(wrk, port, bodies, path, args, args.workers)
    result["point"] = name
    split = "/".join(map(str, result["connections_by_worker"])) or "?"
    print(
        f"  {name:7} {result['requests_per_s']:8.1f} req/s  p50 {result['p50_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:8.2f} ms  errors {result['errors']}  connections {split}"
    )
    return result


def start_stack(
    run: Run,
    settings: dict[str, str],
    tag: str,
    models: list[str],
    embedder_settings: dict[str, str] | None = None,
):
    """Start the embedder (with the DC_* `embedder_settings`), wait until ready, then the API;
    wait until every model serves."""
    embedder = run.start_embedder(f"embedder-{tag}", embedder_settings)
    api = run.start_api(embedder, settings, models, name=f"api-{tag}")
    return embedder, api


def cache_delta(api: Server, before: ApiCounters) -> dict:
    delta = ApiCounters.read(api.port, MODEL).minus(before)
    return {k: delta[k] for k in ("cache_hits", "cache_misses", "cache_hit_share")}


def point_echo(run: Run, wrk: str, settings: dict[str, str], bodies: Path, args) -> dict:
    """(a): the echo app under the same gunicorn settings, warmed by a short round."""
    echo = run.start_echo(settings)
    print(f"measuring, wrk -t{args.wrk_threads} -c{args.connections}, {args.seconds:g} s:")
    run_wrk(wrk, echo.port, bodies, "/echo", warm_round_args(args), args.workers)
    point = measure("echo", wrk, echo.port, bodies, "/echo", args)
    run.stop(echo)
    return point


def point_warm(run: Run, wrk: str, settings, models, texts, bodies: Path, args):
    """(b) the service after every worker's caches got the stream's texts, then (e) the
    memory of its stack.

    Returns:
        The point, the warm-up's figures and the stack's processes' memory.
    """
    print(f"starting the embedder and the API ({len(models)} models) ...")
    # This embedder's cache, filled by the warm-up, is what (f)'s embedder finds on disk.
    embedder, api = start_stack(run, settings, "warm", models, snapshot_settings(run))
    warm = warm_api(api, MODEL, texts, args.workers)
    print(
        f"  warm-up: {len(texts)} texts into each of {len(warm['workers_warmed'])} workers, "
        f"{warm['check_requests']} checks all cache hits"
    )
    run_wrk(wrk, api.port, bodies, PATH, warm_round_args(args), args.workers)
    before = ApiCounters.read(api.port, MODEL)
    point = measure("warm", wrk, api.port, bodies, PATH, args)
    point.update(cache_delta(api, before))
    stack_procs = {"api": group_memory(api), "embedder": group_memory(embedder)}
    run.stop(api, embedder)  # SIGTERM: the embedder writes its snapshot as it exits
    return point, warm, stack_procs


def snapshot_settings(run: Run) -> dict[str, str]:
    """The embedder settings of (b) and (f): the phrase-cache snapshot in the work folder."""
    return {"DC_CACHE_SNAPSHOT": str(run.workdir / SNAPSHOT)}


def point_cold(run: Run, wrk: str, settings, models, bodies: Path, args) -> dict:
    """(c): a fresh API and embedder, no warm-up at all."""
    embedder, api = start_stack(run, settings, "cold", models)
    before = ApiCounters.read(api.port, MODEL)
    point = measure("cold", wrk, api.port, bodies, PATH, args)
    point.update(cache_delta(api, before))
    run.stop(api, embedder)
    return point


def point_restart(run: Run, wrk: str, settings, models, bodies: Path, args) -> dict:
    """(f): a fresh API and embedder, no warm-up, but the embedder reads (b)'s snapshot (and
    the API's workers fill their phrase caches from the embedder's at start, as by default)."""
    if not (run.workdir / SNAPSHOT).exists():
        raise SystemExit(f"(b)'s embedder wrote no snapshot ({SNAPSHOT}) when it was stopped")
    embedder, api = start_stack(run, settings, "restart", models, snapshot_settings(run))
    status, _, body = http_call(embedder.port, "GET", "/info")
    if status != 200:
        raise SystemExit(f"the restarted embedder's /info answered {status}")
    warm_start = json.loads(body)["warm_start"]
    before = ApiCounters.read(api.port, MODEL)
    point = measure("restart", wrk, api.port, bodies, PATH, args)
    point.update(cache_delta(api, before))
    point["warm_start"] = warm_start
    snapshot = warm_start["snapshot"]
    print(
        f"         embedder snapshot: {snapshot['state']}, {snapshot['entries']} phrases in "
        f"{snapshot['seconds']} s"
    )
    if snapshot["state"] != "loaded":
        raise SystemExit(f"the restarted embedder did not load the snapshot: {warm_start}")
    run.stop(api, embedder)
    return point


def point_naive(run: Run, wrk: str, settings, database: Database, texts, bodies: Path, args):
    """(d) the naive app, and its processes' memory (one worker's is (e)'s unit)."""
    naive = run.start_app(
        "naive",
        # The baseline is measured as the design's starting point, without the worker's
        # load shedding: its 100+ ms requests would otherwise be shed in bursts.
        {**settings, "DC_NAIVE_MODELS": MODEL, "DC_MAX_QUEUE_WAIT_MS": "600000"},
        app=NAIVE_APP,
    )
    wait_ready(naive)
    status, _, body = http_call(naive.port, "POST", PATH, {"text": texts[0]}, timeout=120)
    if status != 200:
        raise SystemExit(f"naive app answered {status}: {body[:300]!r}")
    run_wrk(wrk, naive.port, bodies, PATH, warm_round_args(args), args.workers)
    rows_before = count_rows(database.url)
    point = measure("naive", wrk, naive.port, bodies, PATH, args)
    time.sleep(1.0)
    point["rows_inserted"] = count_rows(database.url) - rows_before
    naive_procs = group_memory(naive)
    run.stop(naive)
    return point, naive_procs


# --- report -----------------------------------------------------------------------------------

LABELS = {
    "echo": "(a) bare Flask `POST /echo`",
    "warm": "(b) service, warm caches",
    "cold": "(c) service, empty caches",
    "naive": "(d) naive: encoder + Keras + INSERT per request",
    "restart": "(f) service restarted, embedder snapshot",
}
POINTS = ("echo", "warm", "cold", "restart", "naive")


def to_markdown(report: dict) -> str:
    s, points, mem, ratios = (
        report["settings"], report["points"], report["memory"], report["ratios"],
    )  # fmt: skip
    lines = [
        f"Run {report['when']} on {report['machine']['machine']} ({report['machine']['cpus']} "
        f"CPUs, shared by wrk and the servers); gunicorn `api/gunicorn.conf.py`, "
        f"{s['workers']} workers x {s['threads']} threads for every app; wrk "
        f"-t{s['wrk_threads']} -c{s['connections']}, {s['seconds']:g} s per point; stream: "
        f"`make_requests.py --requests {s['requests']} --distinct {s['distinct']}`, its "
        f"{s['bodies']} {MODEL} requests ({s['distinct_texts']} distinct texts) to "
        f"`/predict/{MODEL}`; database {report['database']['backend']}.",
        "",
        "| point | req/s | p50 ms | p99 ms | errors | cache hits |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in POINTS:
        p = points[key]
        hits = f"{100 * p['cache_hit_share']:.1f}%" if "cache_hit_share" in p else "-"
        lines.append(
            f"| {LABELS[key]} | {p['requests_per_s']:.0f} | {p['p50_ms']:.2f} | "
            f"{p['p99_ms']:.2f} | {p['errors']} | {hits} |"
        )
    snapshot = points["restart"]["warm_start"]["snapshot"]
    lines += [
        "",
        f"(f): the restarted embedder read {snapshot['entries']} phrases from the snapshot its "
        f"predecessor (b) wrote on SIGTERM, in {snapshot['seconds']} s, before it answered "
        "ready; each API worker then filled its own phrase cache from the embedder's at its "
        "start (`GET /snapshot`, DC_CLIENT_WARM_START); the prediction caches started empty.",
        "",
        "| memory (e) | RSS MB | PSS MB |",
        "|---|---:|---:|",
        f"| service stack, {mem['stack_models']} models (API master + {mem['api_workers']} "
        f"workers, embedder master + worker) | {mem['stack_rss_mb']:.0f} | "
        f"{mem['stack_pss_mb']:.0f} |",
        f"| 21 x one naive worker (encoder + 1 Keras head; measured once, x21) | "
        f"{mem['naive21_rss_mb']:.0f} | {mem['naive21_pss_mb']:.0f} |",
        "",
        "| ratio | value | target | |",
        "|---|---:|---:|---|",
    ]
    for key, label, op in (
        ("warm_over_naive", "(b) / (d) req/s", ">="),
        ("warm_over_echo", "(b) / (a) req/s", ">="),
        ("memory_ratio", "memory stack / (21 x naive), RSS", "<"),
        ("restart_over_warm", "(f) / (b) req/s, first seconds after a restart", ">="),
    ):
        verdict = "pass" if ratios[key]["pass"] else "**FAIL**"
        lines.append(
            f"| {label} | {ratios[key]['value']:.3f} | {op} {ratios[key]['target']} | {verdict} |"
        )
    lines.append(
        f"| memory stack / (21 x naive), PSS | {mem['pss_ratio']:.3f} | | (shared pages "
        f"counted once) |"
    )
    return "\n".join(lines) + "\n"


def save_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, mem = report["points"], report["memory"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    bars = left.bar(
        ["(a) echo", "(b) warm", "(c) cold", "(f) restart", "(d) naive"],
        [points[k]["requests_per_s"] for k in POINTS],
        color=["grey", "tab:green", "tab:orange", "tab:cyan", "tab:red"],
    )
    left.bar_label(bars, fmt="%.0f")
    left.set_ylabel("requests/s")
    left.set_title("throughput (same wrk, same gunicorn settings)")
    bars = right.bar(
        ["stack RSS", "stack PSS", "21 x naive RSS", "21 x naive PSS"],
        [mem["stack_rss_mb"], mem["stack_pss_mb"], mem["naive21_rss_mb"], mem["naive21_pss_mb"]],
        color=["tab:green", "tab:olive", "tab:red", "salmon"],
    )
    right.bar_label(bars, fmt="%.0f")
    right.set_ylabel("MB")
    right.set_title(f"memory, {mem['stack_models']} models")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(report: dict) -> None:
    points, mem, ratios = report["points"], report["memory"], report["ratios"]
    print()
    print(f"{'point':50} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>9} {'errors':>7} {'hits':>7}")
    for key in POINTS:
        p = points[key]
        hits = f"{100 * p['cache_hit_share']:.1f}%" if "cache_hit_share" in p else "-"
        print(
            f"{LABELS[key].replace('`', ''):50} {p['requests_per_s']:8.1f} {p['p50_ms']:8.2f} "
            f"{p['p99_ms']:9.2f} {p['errors']:7d} {hits:>7}"
        )
    print(
        f"memory: stack ({mem['stack_models']} models) RSS {mem['stack_rss_mb']:.0f} MB, PSS "
        f"{mem['stack_pss_mb']:.0f} MB; one naive worker RSS {mem['naive_rss_mb']:.0f} MB, "
        f"PSS {mem['naive_pss_mb']:.0f} MB (x21: {mem['naive21_rss_mb']:.0f} / "
        f"{mem['naive21_pss_mb']:.0f} MB)"
    )
    for key, value in ratios.items():
        verdict = "PASS" if value["pass"] else "FAIL"
        print(f"  {key:17} {value['value']:8.3f}  target {value['target']}  {verdict}")


def ratios_of(points: dict, memory: dict) -> dict:
    """The four ratios, each with its target and whether it is met."""
    warm = points["warm"]["requests_per_s"]
    values = {
        "warm_over_naive": warm / points["naive"]["requests_per_s"],
        "warm_over_echo": warm / points["echo"]["requests_per_s"],
        "memory_ratio": memory["rss_ratio"],
        "restart_over_warm": points["restart"]["requests_per_s"] / warm,
    }
    return {
        key: {
            "value": value,
            "target": TARGETS[key],
            "pass": value < TARGETS[key] if key == "memory_ratio" else value >= TARGETS[key],
        }
        for key, value in values.items()
    }


def make_report(args, run: Run, stream: dict, facts: dict, points: dict, memory: dict) -> dict:
    """design.json: settings, every point, memory, ratios, pass/fail.

    Args:
        stream: the stream's length, bodies and distinct texts; facts: the registry rows
            copied, the copies' names and the warm-up.
    """
    ratios = ratios_of(points, memory)
    return {
        "when": timestamp(),
        "smoke": args.smoke,
        "machine": machine_info(),
        "settings": {
            "seconds": args.seconds,
            "workers": args.workers,
            "threads": args.threads,
            "wrk_threads": args.wrk_threads,
            "connections": args.connections,
            "requests": args.requests,
            "distinct": args.distinct,
            "stream_requests": stream["requests"],
            "bodies": stream["bodies"],
            "distinct_texts": stream["distinct_texts"],
            "model": MODEL,
            "copies": facts["copies"],
        },
        "database": {"backend": run.database.backend, "how": run.database.how},
        "registry": facts["copied"],
        "warm_up": facts["warm"],
        "points": points,
        "memory": memory,
        "ratios": ratios,
        "pass": all(r["pass"] for r in ratios.values()),
    }


def save(report: dict, args) -> None:
    """design.json, design.md and design.png into args.out; the table on stdout."""
    markdown = smoke.mark(to_markdown(report), args.smoke)
    write_results(args.out, "design", report, markdown)
    try:
        save_chart(report, args.out / "design.png")
    except Exception as exc:  # the figures are saved either way
        print(f"no chart: {exc}")
    print_table(report)
    print()
    print(markdown)
    print(f"saved {args.out / 'design.json'}, design.md and design.png")


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Settings()
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk seconds per point (10)")
    parser.add_argument("--requests", type=int, default=20_000, help="stream length (20000)")
    parser.add_argument(
        "--distinct", type=int, default=2_000, help="distinct phrases per model (2000)"
    )
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument(
        "--workers", type=int, default=defaults.api_workers, help="gunicorn workers, every app"
    )
    parser.add_argument(
        "--threads", type=int, default=defaults.api_threads, help="threads per worker, every app"
    )
    parser.add_argument(
        "--copies", type=int, default=21, help="extra promoted models m01..mNN for (e) (21)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default bench/results; var/bench-smoke/results with --smoke)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check that the benchmark works (see above); overrides --seconds, "
        "--requests, --distinct, --copies, --workers and --connections",
    )
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.requests, args.distinct, args.copies = 1.0, 1000, 100, 2
        # One worker: the naive app loads the encoder once. No more connections than request
        # threads: none waits for one, so none is shed (429) however busy the machine is.
        args.workers = 1
        args.connections = args.threads
        args.out = smoke.smoke_out(args.out)
    elif args.out is None:
        args.out = REPO / "bench" / "results"
    if args.seconds <= 0 or args.requests < 1 or args.distinct < 1 or args.copies < 0:
        parser.error("--seconds, --requests, --distinct must be positive")
    return args


def main() -> int:
    args = parse_args()
    wrk = ensure_wrk()
    settings = Settings()
    points: dict[str, dict] = {}
    with Run("bench-design-", keep_logs=args.keep_logs) as run:
        bodies, texts, stream_len = make_stream(run.workdir, args.requests, args.distinct)
        n_bodies = len(bodies.read_text().splitlines())
        print(
            f"stream: {stream_len} requests, {n_bodies} for {MODEL} ({len(texts)} distinct texts)"
        )
        database, copied = run.prepare_database(settings, smoke=args.smoke)
        copies = register_copies(database, args.copies, settings, run.workdir)
        models = [c["model"] for c in copied] + copies
        print(f"registry: {len(models)} promoted models ({', '.join(models[:4])}, ...)")
        shared = app_settings(database, args.workers, args.threads)
        points["echo"] = point_echo(run, wrk, shared, bodies, args)
        points["warm"], warm, stack_procs = point_warm(
            run, wrk, shared, models, texts, bodies, args
        )
        points["cold"] = point_cold(run, wrk, shared, models, bodies, args)
        points["restart"] = point_restart(run, wrk, shared, models, bodies, args)
        points["naive"], naive_procs = point_naive(run, wrk, shared, database, texts, bodies, args)
    memory = memory_summary(stack_procs, naive_procs, len(models))
    stream = {"requests": stream_len, "bodies": n_bodies, "distinct_texts": len(texts)}
    facts = {"copied": copied, "copies": copies, "warm": warm}
    report = make_report(args, run, stream, facts, points, memory)
    save(report, args)
    if args.smoke:
        smoke.require_no_errors(points)
        return 0
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    run_main(main)
