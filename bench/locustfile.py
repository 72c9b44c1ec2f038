"""The JMeter load test (bench/jmeter/predict.jmx) for Locust: POST /predict/<model> from a stream.

Locust is not a project dependency; install it where you run it:

    .venv/bin/pip install locust
    .venv/bin/python scripts/make_requests.py --out-dir var/loadtest    # when missing
    LOADTEST_JSONL=var/loadtest/requests.jsonl \
        locust -f bench/locustfile.py --headless -u 16 -r 4 -t 60s --host http://127.0.0.1:8000

Add `--csv var/loadtest/locust` for CSV statistics. The request stream is the JSONL written by
scripts/make_requests.py, one `{"model": ..., "text": ...}` per line, read from the path in
LOADTEST_JSONL (default var/loadtest/requests.jsonl). There is one task per model, weighted by
that model's share of the stream, and each task replays that model's phrases in stream order
(wrapping around), so the mix of models and the repetition of phrases (what the API's embedding
cache sees) follow the stream. A response counts as failed unless it is 200 with a JSON body
that has a "label". Requests are named `POST /predict/<model>` as in the JMeter results.
Set LOADTEST_WAIT_S (default 0) for a pause between a user's requests.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import ClassVar

from locust import HttpUser, constant

REPO = Path(__file__).resolve().parents[1]
JSONL = Path(os.environ.get("LOADTEST_JSONL", REPO / "var" / "loadtest" / "requests.jsonl"))


def load_stream(path: Path) -> dict[str, list[str]]:
    """The phrases of each model in stream order, from a JSONL of {"model", "text"} lines."""
    if not path.is_file():
        raise SystemExit(
            f"{path} is missing: run .venv/bin/python scripts/make_requests.py "
            "--out-dir var/loadtest, or set LOADTEST_JSONL"
        )
    texts: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                texts.setdefault(row["model"], []).append(row["text"])
    if not texts:
        raise SystemExit(f"{path} has no requests")
    return texts


STREAM = load_stream(JSONL)
WEIGHTS = Counter({model: len(texts) for model, texts in STREAM.items()})
# One shared cursor per model: all users together replay the stream in order.
_CURSORS = {model: itertools.cycle(texts) for model, texts in STREAM.items()}
_LOCK = threading.Lock()


def next_text(model: str) -> str:
    """The next phrase of a model's stream (shared by all users, wrapping around)."""
    with _LOCK:
        return next(_CURSORS[model])


def predict_task(model: str):
    """A task that posts the model's next phrase and checks the status and the "label"."""

    def run(user: HttpUser) -> None:
        body = {"text": next_text(model)}
        with user.client.post(
            f"/predict/{model}", json=body, name=f"POST /predict/{model}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            try:
                label = response.json().get("label")
            except ValueError:
                response.failure("body is not JSON")
                return
            if label is None:
                response.failure('no "label" in the body')
            else:
                response.success()

    run.__name__ = f"predict_{model}"
    return run


class PredictUser(HttpUser):
    """One simulated client; picks a model per request in proportion to the stream's mix."""

    wait_time = constant(float(os.environ.get("LOADTEST_WAIT_S", "0")))
    # {task: weight}: Locust picks each task with probability weight / sum(weights).
    tasks: ClassVar[dict] = {predict_task(model): weight for model, weight in WEIGHTS.items()}
