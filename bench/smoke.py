"""Smoke mode of the benchmarks: tiny demo models, a scratch folder, and the run of them all.

Every benchmark takes `--smoke`: one short point of each kind it measures, on tiny inputs,
through the same code as a real run (servers, wrk, the database, the result files), so that
`make bench-smoke` (run by `make test`) fails when a change breaks a benchmark. Smoke runs
check that the path works, not the figures: their targets are printed but never decide the
exit status; errors in the answers, or predictions missing from the inference log, do.

`--run` is `make bench-smoke`: it empties var/bench-smoke/, runs the commands of SMOKE_LANES
(each lane in order, the two lanes side by side: their figures do not matter, and on two cores
that halves the wall time, which is mostly models loading), each one's output in
var/bench-smoke/logs/<name>.log, then checks that every result file was written. A lane stops
at its first failure; the tail of a failed log is printed. About 2 minutes.

The benchmarks that serve or score heads read the demo models banking77 and clinc150, which a
clean clone does not have (training them takes minutes). `ensure_models` trains two tiny heads
with those names instead, through the real pipeline (`dc.pipeline.train_model`, the real
configs in configs/ with a few epochs): six intents of each dataset (clinc150's with `oos`), a
few examples each, into var/bench-smoke/models/ (artifacts/ and a SQLite registry of its own,
both versions promoted). About 20 s. Smoke results go to var/bench-smoke/results/, never to
bench/results/.

Usage: python bench/smoke.py [--run [--serial]] [--fresh] [--check-results]
  (no option)      make the tiny models when they are missing or stale
  --fresh          remove var/bench-smoke/ first (old models and smoke results), then train
  --run            every benchmark's smoke run, as above (--serial: one at a time)
  --check-results  only check that every smoke result file exists and is not empty
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The region the benchmarks read the models from (the smoke models are trained into it).
from bench.harness.database import REGION  # noqa: E402
from dc.config import VAR_DIR, Settings  # noqa: E402

SMOKE_DIR = VAR_DIR / "bench-smoke"
MODELS_DIR = SMOKE_DIR / "models"
REGISTRY = MODELS_DIR / "dc.sqlite"  # the smoke registry, in place of var/dc.sqlite
ARTIFACTS = MODELS_DIR / "artifacts"
RESULTS = SMOKE_DIR / "results"
LOGS = SMOKE_DIR / "logs"
COMMITTED_RESULTS = REPO / "bench" / "results"
READY = MODELS_DIR / "ready.json"  # written last: the models are complete

# model -> (labels, {file: (split, rows per label)}); the datasets' own splits, as the demo.
SUBSETS = {
    "banking77": (
        ("card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked",
         "cash_withdrawal_charge"),
        {"train.csv": ("train", 16), "test.csv": ("test", 6)},
    ),
    "clinc150": (
        ("translate", "transfer", "timer", "flight_status", "payday", "oos"),
        {"train.csv": ("train", 16), "val.csv": ("validation", 4), "test.csv": ("test", 6)},
    ),
}  # fmt: skip
EPOCHS = 3
MIN_EXAMPLES_PER_CLASS = 5

# What `--run` (make bench-smoke) runs: two lanes of (name, command), each lane in order. The
# first of lane 1 trains the tiny models (the others that need them wait on its lock); the
# lanes take about as long as each other.
SMOKE_LANES = (
    (
        ("bench_heads", ["bench/bench_heads.py", "--smoke"]),
        ("bench_api", ["bench/bench_api.py", "--smoke"]),
        ("bench_design", ["bench/bench_design.py", "--smoke"]),
        ("bench_log_size", ["bench/bench_log_size.py", "--smoke"]),
        ("bench_batch", ["bench/bench_batch.py", "--smoke"]),
        ("bench_accuracy", ["bench/bench_accuracy.py", "--smoke"]),
    ),
    (
        ("bench_embedder", ["bench/bench_embedder.py", "--smoke"]),
        ("bench_tf_threads", ["bench/bench_tf_threads.py", "--smoke"]),
        ("bench_backends", ["bench/bench_backends.py", "--smoke"]),
        ("sweep_sizing", ["bench/sweep_sizing.py", "--smoke"]),
        ("bench_overload", ["bench/bench_overload.py", "--smoke", "--out", str(RESULTS)]),
        ("bench_reports", ["bench/bench_reports.py", "--smoke"]),
    ),
)
LOG_TAIL_LINES = 40

# What each benchmark's smoke run writes into RESULTS (checked by --check-results).
EXPECTED_RESULTS = (
    "embedder.json", "embedder.md", "tf_threads.json", "tf_threads.md", "backends.json",
    "backends.md", "heads.json", "heads.md",
    "api.json", "api.md", "design.json", "design.md", "design.png", "sizing.json", "sizing.md",
    "sizing.png", "overload.json", "overload.md", "log_size.json", "log_size.md", "reports.json",
    "reports.md", "batch.json", "batch.md", "accuracy.json", "accuracy.md",
)  # fmt: skip


NOTE = "SMOKE RUN: a few seconds on tiny inputs, to check that the benchmark works; not figures."


def add_arguments(parser: argparse.ArgumentParser, smoke_help: str | None = None) -> None:
    """The options every benchmark has: `--out` (default bench/results, or var/bench-smoke/
    results with --smoke; see `smoke_out`) and `--smoke`."""
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the results (default bench/results; var/bench-smoke/results with "
        "--smoke)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=smoke_help or "a quick check that the benchmark works (see above)",
    )


def mark(markdown: str, smoke: bool) -> str:
    """`markdown` with NOTE in front when it comes from a smoke run (never README material)."""
    return f"{NOTE}\n\n{markdown}" if smoke else markdown


def smoke_out(out: Path | None) -> Path:
    """The result folder of a smoke run: `out`, or RESULTS; never the committed bench/results/.

    Raises:
        SystemExit: `out` is bench/results/.
    """
    if out is None:
        return RESULTS
    if out.resolve() == COMMITTED_RESULTS.resolve():
        raise SystemExit(f"--smoke never writes to {COMMITTED_RESULTS}: give another --out")
    return out


def require_no_errors(points: dict[str, dict]) -> None:
    """End a smoke run with an error when a measured point had errors or no answer at all.

    Args:
        points: name -> a point's figures, with `errors` and `requests` (wrk's counts).
    """
    bad = {
        name: f"{p.get('errors', 0)} errors in {p.get('requests', 0)} requests"
        for name, p in points.items()
        if p.get("errors", 0) or not p.get("requests", 0)
    }
    if bad:
        raise SystemExit(
            "smoke run failed: " + "; ".join(f"{name}: {why}" for name, why in bad.items())
        )


def _current_fingerprint(settings: Settings) -> str | None:
    """The encoder export's fingerprint from its embedder.json (None for other handles)."""
    try:
        metadata = json.loads((Path(settings.embedder_handle) / "embedder.json").read_text())
    except (OSError, ValueError):
        return None
    return metadata.get("fingerprint")


def models_ready(settings: Settings | None = None) -> bool:
    """Whether the tiny models are complete and trained on the current encoder export."""
    try:
        ready = json.loads(READY.read_text())
    except (OSError, ValueError):
        return False
    fingerprint = _current_fingerprint(settings or Settings())
    folders_exist = all(Path(m["version_dir"]).is_dir() for m in ready["models"].values())
    return folders_exist and (fingerprint is None or ready["fingerprint"] == fingerprint)


def train_models() -> dict:
    """Train and promote the tiny banking77 and clinc150 into MODELS_DIR (replacing it).

    Returns:
        What READY records: the encoder fingerprint and, per model, version and folder.
    """
    from dc.data import load_csv, write_subset
    from dc.model_config import ModelConfig, load_config
    from dc.nlp.embeddings import LocalEmbedder
    from dc.pipeline import train_model
    from persistence.db import make_engine, upgrade

    shutil.rmtree(MODELS_DIR, ignore_errors=True)
    (MODELS_DIR / "data").mkdir(parents=True)
    url = f"sqlite:///{REGISTRY}"
    settings = Settings(artifacts_dir=str(ARTIFACTS), database_url=url, s3_bucket="")
    upgrade(url)
    engine = make_engine(url)
    embedder = LocalEmbedder.from_settings(settings)
    ready: dict = {"fingerprint": embedder.fingerprint, "models": {}}
    try:
        for model, (labels, files) in SUBSETS.items():
            for file, (split, per_label) in files.items():
                subset = write_subset(
                    REPO / "data" / model / file,
                    MODELS_DIR / "data" / f"{model}-{file}",
                    labels,
                    per_label,
                )
                load_csv(engine, subset, model=model, region=REGION, split=split)
            raw = load_config(REPO / "configs" / f"{model}.toml").as_dict()
            raw["data"]["min_examples_per_class"] = MIN_EXAMPLES_PER_CLASS
            raw["training"]["epochs"] = EPOCHS
            config = ModelConfig.model_validate(raw)
            started = time.perf_counter()
            result = train_model(
                config,
                settings,
                embedder=embedder,
                engine=engine,
                promote=True,
                force=True,
                backup=False,
            )
            print(
                f"smoke model {model} {result.version}: {len(labels)} classes, test accuracy "
                f"{result.metrics['accuracy']:.2f}, {time.perf_counter() - started:.1f} s"
            )
            ready["models"][model] = {
                "version": result.version,
                "version_dir": str(result.version_dir),
            }
    finally:
        embedder.close()
        engine.dispose()
    READY.write_text(json.dumps(ready, indent=2) + "\n")
    return ready


def ensure_models() -> Path:
    """Make the tiny models when they are missing or stale (one process at a time: another
    that is training them is waited for, and its models are used).

    Returns:
        The SQLite file of their registry (the benchmarks copy its promoted rows).
    """
    SMOKE_DIR.mkdir(parents=True, exist_ok=True)
    with open(SMOKE_DIR / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not models_ready():
            print(f"training the tiny smoke models into {MODELS_DIR} ...")
            train_models()
    return REGISTRY


def check_results(folder: Path = RESULTS) -> list[str]:
    """The expected smoke result files that are missing or empty in `folder`."""
    return [
        name
        for name in EXPECTED_RESULTS
        if not (folder / name).is_file() or (folder / name).stat().st_size == 0
    ]


_say_lock = threading.Lock()


def _say(line: str) -> None:
    """Print one whole line (two lanes print at once)."""
    with _say_lock:
        print(line, flush=True)


class _Lane(threading.Thread):
    """Runs one lane's commands in order, each with its output in LOGS/<name>.log."""

    def __init__(self, number: int, commands, stopping: threading.Event) -> None:
        super().__init__(name=f"lane-{number}", daemon=True)
        self.number, self.commands, self.stopping = number, commands, stopping
        self.results: list[tuple[str, int, float]] = []  # (name, exit status, seconds)
        self.proc: subprocess.Popen | None = None
        # Waited on instead of join(): a KeyboardInterrupt inside Thread.join(timeout) can
        # leave the thread marked as stopped while it still runs (CPython 3.11).
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.done.set()

    def _run(self) -> None:
        for name, command in self.commands:
            if self.stopping.is_set():
                return
            _say(f"[lane {self.number}] {name} ...")
            started = time.perf_counter()
            with open(LOGS / f"{name}.log", "wb") as log:
                # A session of its own: a Ctrl-C reaches only this runner, which then stops
                # each benchmark once, in order (a second signal could cut its clean-up short).
                self.proc = subprocess.Popen(
                    [sys.executable, *command],
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                if self.stopping.is_set():  # stopped while this one was starting
                    self.stop()
                status = self.proc.wait()
            seconds = time.perf_counter() - started
            self.results.append((name, status, seconds))
            if self.stopping.is_set():
                _say(f"[lane {self.number}] {name} stopped")
                return
            verdict = "ok" if status == 0 else f"FAILED (exit status {status})"
            _say(f"[lane {self.number}] {name} {verdict} in {seconds:.0f} s")
            if status != 0:
                return  # the lane's later benchmarks may need what this one makes

    def stop(self) -> None:
        """SIGTERM to the running benchmark's process group: the benchmark stops the servers it
        started in sessions of their own and exits; the processes of its group go with it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)


def _log_tail(name: str) -> str:
    lines = (LOGS / f"{name}.log").read_text(errors="replace").splitlines()
    return "\n".join(f"    {line}" for line in lines[-LOG_TAIL_LINES:])


def run_all(serial: bool = False) -> int:
    """Every benchmark's smoke run (SMOKE_LANES) from an empty var/bench-smoke/.

    Args:
        serial: run the lanes one after the other instead of side by side.

    Returns:
        0 when every benchmark passed and wrote its results, else 1 (130 when interrupted).
    """
    from bench.harness.run import install_stop_handlers

    shutil.rmtree(SMOKE_DIR, ignore_errors=True)
    LOGS.mkdir(parents=True)
    install_stop_handlers()
    _say(f"smoke runs of every benchmark; logs in {LOGS}")
    started = time.perf_counter()
    stopping = threading.Event()
    lanes = [_Lane(n, commands, stopping) for n, commands in enumerate(SMOKE_LANES, 1)]
    try:
        for lane in lanes:
            lane.start()
            while serial and not lane.done.wait(0.5):  # a timeout, so that signals are seen
                pass
        for lane in lanes:
            while not lane.done.wait(0.5):
                pass
    except KeyboardInterrupt:
        for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(stop_signal, signal.SIG_IGN)  # wait for the benchmarks' clean-up
        stopping.set()
        for lane in lanes:
            lane.stop()
        for lane in lanes:
            lane.done.wait()
        print("interrupted; every benchmark started was stopped")
        return 130
    results = [result for lane in lanes for result in lane.results]
    failed = [name for name, status, _ in results if status != 0]
    for name in failed:
        print(f"\n{name} failed; the end of {LOGS / (name + '.log')}:\n{_log_tail(name)}")
    ran = {name for name, _, _ in results}
    skipped = [name for lane in SMOKE_LANES for name, _ in lane if name not in ran]
    missing = [] if failed else check_results()
    if missing:
        print(f"smoke results missing or empty in {RESULTS}: {', '.join(missing)}")
    total = time.perf_counter() - started
    if failed or missing:
        note = f"; not run after a failure: {', '.join(skipped)}" if skipped else ""
        print(f"\nbench-smoke FAILED in {total:.0f} s: {', '.join(failed) or 'results'}{note}")
        return 1
    print(f"\nbench-smoke passed: {len(results)} benchmarks in {total:.0f} s; results in {RESULTS}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fresh", action="store_true", help="remove var/bench-smoke/ first, then train"
    )
    parser.add_argument(
        "--check-results",
        action="store_true",
        help="only check that every smoke result file exists and is not empty",
    )
    parser.add_argument(
        "--run", action="store_true", help="every benchmark's smoke run (make bench-smoke)"
    )
    parser.add_argument("--serial", action="store_true", help="with --run: one benchmark at a time")
    args = parser.parse_args(argv)
    if args.run:
        return run_all(serial=args.serial)
    if args.check_results:
        missing = check_results()
        if missing:
            print(f"smoke results missing or empty in {RESULTS}: {', '.join(missing)}")
            return 1
        print(f"smoke results complete in {RESULTS} ({len(EXPECTED_RESULTS)} files)")
        return 0
    if args.fresh:
        shutil.rmtree(SMOKE_DIR, ignore_errors=True)
    started = time.perf_counter()
    ensure_models()
    print(f"smoke models ready in {MODELS_DIR} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
