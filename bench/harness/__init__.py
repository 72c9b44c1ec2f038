"""The harness the benchmarks of bench/ share: what a run needs around its own measurements.

A benchmark is a script that says what it measures and reports; how servers are started and
always stopped, where the database comes from, how wrk is driven and read, and how results are
written live here, once:

- `run`: one run's resources (work folder, servers, scratch database), released at the end
  whatever happens, and the stop signals that make sure of it;
- `processes`: gunicorn process groups on free ports, their logs, readiness;
- `client`: HTTP calls, the API's Prometheus counters, the warm-up of every worker's cache;
- `database`: the scratch database and the demo models' registry rows copied into it;
- `wrk`: wrk rounds (bench/predict.lua) and their figures;
- `inputs`: the phrases and request bodies the load is made of;
- `results`: the machine, latency summaries, the JSON and markdown result files.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
