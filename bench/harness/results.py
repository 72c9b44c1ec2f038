"""What a benchmark reports: the machine it ran on, latency summaries, the result files.

Every benchmark writes `<name>.json` (every figure, machine-readable) and `<name>.md` (the
table the README quotes) into one folder: bench/results/ for a real run, var/bench-smoke/
for a smoke run (bench/smoke.py).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def timestamp() -> str:
    """When a run happened, as its results say it: "2025-01-31 14:05 UTC"."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine_info(load_tools: bool = True) -> dict:
    """The platform, CPUs, Python and gunicorn; with `load_tools`, also the versions of Flask
    and wrk (for the benchmarks that drive a Flask app with wrk)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gunicorn": metadata.version("gunicorn"),
    }
    if load_tools:
        wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        info["flask"] = metadata.version("flask")
        info["wrk"] = (wrk_version.stdout or wrk_version.stderr).splitlines()[0].strip()
    return info


def percentile(values: list[float], q: float) -> float | None:
    """The `q`-th percentile (nearest rank) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def latency_summary(latencies: list[float]) -> dict[str, Any]:
    """count, p50, p99 and max of `latencies` (seconds), in milliseconds."""

    def ms(value):
        return None if value is None else round(1000 * value, 2)

    return {
        "count": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies) if latencies else None),
    }


def write_results(out: Path, name: str, report: Any, markdown: str) -> None:
    """`report` as out/<name>.json (indented) and `markdown` as out/<name>.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
