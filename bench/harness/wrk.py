"""wrk rounds: the load generator of the HTTP benchmarks, and its figures.

wrk (C, epoll; Debian package `wrk`, installed when missing) costs little of the machine's two
cores. The Lua scripts (bench/predict.lua, bench/embed.lua) print their figures as one
`WRK_JSON {...}` line at the end of a run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bench.harness import REPO
from bench.harness.client import HOST

WARM_WRK_SECONDS = 2.0
MAX_ATTEMPTS = 5  # starts of one wrk round when its connections leave a worker idle


def ensure_wrk() -> str:
    """Path of wrk, installing Debian's package when it is missing."""
    if shutil.which("wrk") is None:
        print("installing wrk (Debian package) for the load generator")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
        if shutil.which("wrk") is None:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk")


def wrk_json(output: str) -> dict:
    """The figures a Lua script of bench/ printed on its `WRK_JSON ` line of wrk's output."""
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    return json.loads(line.removeprefix("WRK_JSON "))


def connections_by_process(port: int) -> dict[str, int]:
    """Established connections to `port`, by the pid that accepted them (`ss`, when present).

    wrk opens its connections once and keeps them, so which worker accepted each one decides
    how the round's load is split between the workers (a worker runs on one core at a time).
    """
    if shutil.which("ss") is None:
        return {}
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", listing):
        counts[pid] = counts.get(pid, 0) + 1
    return dict(sorted(counts.items()))


def _wrk_figures(output: str) -> dict:
    figures = wrk_json(output)
    return {
        "requests_per_s": figures["requests"] / figures["duration_s"],
        "requests": figures["requests"],
        "ok_2xx": figures["responses"] - figures["non2xx"],
        "non2xx": figures["non2xx"],
        "socket_errors": figures["socket_errors"],
        "errors": figures["socket_errors"] + figures["non2xx"],
        "in_flight_at_stop": max(0, figures["issued"] - figures["responses"]),
        "duration_s": figures["duration_s"],
        "p50_ms": figures["p50_ms"],
        "p90_ms": figures["p90_ms"],
        "p99_ms": figures["p99_ms"],
        "max_ms": figures["max_ms"],
    }


def run_wrk(wrk: str, port: int, bodies: Path, path: str, args, workers: int = 0) -> dict:
    """One wrk round: `args.connections` connections on `args.wrk_threads` threads, for
    `args.seconds`, POSTing the JSON bodies of `bodies` (one a line) to `path` (predict.lua).

    wrk opens its connections once, in a burst, and the gunicorn workers race to accept them;
    now and then one worker takes them all and the other idles, which caps the round at one
    core (one GIL) whatever the app does. When `workers` > 1, a round whose connections (seen
    with `ss` one second in) leave a worker without any is stopped (SIGINT: wrk still reports
    what it counted) and started again, up to MAX_ATTEMPTS times. The discarded attempts are
    kept in the result: the server answered (and logged) their requests too.
    """
    command = [
        wrk, f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{args.seconds:g}s",
        "--timeout", "10s", "-s", str(REPO / "bench" / "predict.lua"),
        f"http://{HOST}:{port}", "--", str(bodies), str(args.wrk_threads), path,
    ]  # fmt: skip
    expected = min(workers, args.connections)
    discarded: list[dict] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            try:
                time.sleep(min(1.0, args.seconds / 4))
                split = connections_by_process(port)
                degenerate = expected > 1 and split and len(split) < expected
                if degenerate and attempt < MAX_ATTEMPTS:
                    proc.send_signal(signal.SIGINT)
                    output, _ = proc.communicate(timeout=30)
                    figures = _wrk_figures(output)
                    figures["connections_by_worker"] = sorted(split.values(), reverse=True)
                    discarded.append(figures)
                    time.sleep(0.5)  # let the servers close the abandoned connections
                    continue
                output, errors = proc.communicate()
            except BaseException:
                proc.kill()
                raise
        break
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {errors.strip()}")
    result = _wrk_figures(output)
    result["connections_by_worker"] = sorted(split.values(), reverse=True)
    result["discarded_attempts"] = discarded
    return result


def warm_round_args(args: argparse.Namespace) -> argparse.Namespace:
    """`args` for a warm-up round before the measured ones: WARM_WRK_SECONDS long (in a smoke
    run no longer than a measured round)."""
    seconds = min(WARM_WRK_SECONDS, args.seconds) if args.smoke else WARM_WRK_SECONDS
    return argparse.Namespace(**{**vars(args), "seconds": seconds})


def summarise(rounds: list[dict]) -> dict:
    """The medians of the rounds' requests/s, p50 and p99, and their summed counts."""
    return {
        "requests_per_s": statistics.median(r["requests_per_s"] for r in rounds),
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "non2xx": sum(r["non2xx"] for r in rounds),
        "socket_errors": sum(r["socket_errors"] for r in rounds),
        "requests": sum(r["requests"] for r in rounds),
        "ok_2xx": sum(r["ok_2xx"] for r in rounds),
        "in_flight_at_stop": sum(r["in_flight_at_stop"] for r in rounds),
        # Attempts stopped because a worker got no connection: not measured, but answered.
        "discarded_attempts": sum(len(r["discarded_attempts"]) for r in rounds),
        "discarded_ok_2xx": sum(d["ok_2xx"] for r in rounds for d in r["discarded_attempts"]),
        "discarded_in_flight": sum(
            d["in_flight_at_stop"] for r in rounds for d in r["discarded_attempts"]
        ),
        "rounds_requests_per_s": [round(r["requests_per_s"], 1) for r in rounds],
    }
