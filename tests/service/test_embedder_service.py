"""The embedder service under a real gunicorn, and the remote client against it."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests

from dc.errors import EmbedderUnavailable, InvalidInput, Overloaded
from dc.nlp.embeddings import RemoteEmbedder, vectors_to_bytes
from tests.conftest import free_port, run_gunicorn

pytestmark = pytest.mark.slow

SERVICE_ENV = {
    "DC_MAX_BATCH_SIZE": "8",
    "DC_MAX_QUEUE": "64",
    "DC_MAX_TEXTS_PER_REQUEST": "32",
    "DC_EMBEDDER_THREADS": "24",
    "DC_CACHE_SIZE": "10000",
    "DC_LOG_LEVEL": "WARNING",
}


@pytest.fixture(scope="module")
def service():
    with run_gunicorn("embedder/gunicorn.conf.py", SERVICE_ENV) as (url, _proc):
        yield url


def test_readme_curl_returns_one_384_d_vector(service):
    response = requests.post(
        service + "/embed",
        data='{"texts":["my card has not arrived"]}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1 and len(body["vectors"]) == 1 and len(body["vectors"][0]) == 384


def test_flooding_the_queue_gets_429_then_the_service_recovers(service):
    """24 clients each send 32 new texts at once against a queue of 64: most cannot fit."""

    def flood(client_id: int) -> list[tuple[int, str | None, str | None]]:
        seen = []
        with requests.Session() as session:
            for round_ in range(4):
                texts = [f"flood {client_id} {round_} phrase number {i}" for i in range(32)]
                r = session.post(service + "/embed", json={"texts": texts}, timeout=60)
                code = r.json()["error"]["code"] if r.status_code != 200 else None
                seen.append((r.status_code, code, r.headers.get("Retry-After")))
        return seen

    started = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        results = [item for batch in pool.map(flood, range(24)) for item in batch]
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0 and statuses[200] > 0, statuses
    assert all(
        code == "overloaded" and retry == "1" for status, code, retry in results if status == 429
    )
    assert time.monotonic() - started < 120

    # Recovery: the queue drains and ordinary requests succeed again.
    assert requests.get(service + "/ready", timeout=10).status_code == 200
    response = requests.post(service + "/embed", json={"texts": ["after the flood"]}, timeout=10)
    assert response.status_code == 200
    info = requests.get(service + "/info", timeout=10).json()
    assert info["batching"]["queue_depth"] == 0
    metrics = requests.get(service + "/metrics", timeout=10).text
    assert 'embedder_requests_total{endpoint="/embed",status="429"}' in metrics


def batch_counters(url: str) -> tuple[float, float]:
    """(encoder calls, texts encoded) so far, from the service's metrics."""
    values = dict(
        line.split(" ", 1)
        for line in requests.get(url + "/metrics", timeout=10).text.splitlines()
        if line.startswith(("embedder_batch_size_count ", "embedder_batch_size_sum "))
    )
    return float(values["embedder_batch_size_count"]), float(values["embedder_batch_size_sum"])


def test_concurrent_clients_get_their_own_vectors(service, encoder):
    """Concurrent single-phrase requests are batched together, yet each gets its own vector."""
    texts = [f"where is my parcel number {i}" for i in range(64)]
    expected = encoder.encode(texts)

    def one(i):
        r = requests.post(service + "/embed", json={"texts": [texts[i]]}, timeout=30)
        return np.array(r.json()["vectors"][0], dtype=np.float32)

    calls_before, texts_before = batch_counters(service)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(len(texts))))
    calls_after, texts_after = batch_counters(service)
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-6)
    assert texts_after - texts_before == len(texts)  # every phrase encoded exactly once
    assert calls_after - calls_before < len(texts)  # concurrency produced real batches


def test_remote_client_matches_the_encoder_and_chunks_large_lists(service, encoder):
    client = RemoteEmbedder(service, cache_size=100)
    texts = [f"remote phrase {i}" for i in range(70)]  # over the 32-per-request limit
    result = client.embed(texts + texts[:2])
    assert result.vectors.shape == (72, 384)
    np.testing.assert_allclose(result.vectors[:70], encoder.encode(texts), atol=1e-6)
    assert result.fingerprint == encoder.fingerprint == client.fingerprint
    assert client.dimension == 384 and client.name == encoder.name
    assert result.cached == [False] * 72  # the repeats were encoded once, in the same call
    again = client.embed(texts[:3])
    assert again.cached == [True, True, True]
    np.testing.assert_array_equal(again.vectors, result.vectors[:3])
    with pytest.raises(InvalidInput, match="at most"):
        client.embed(["x" * 3000])
    client.close()


def test_remote_client_keeps_serving_cached_phrases_when_the_service_is_down(service):
    client = RemoteEmbedder(service, cache_size=100, retries=1, backoff_s=0.01)
    known = client.embed(["card arrival status"]).vectors
    client.url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the service is gone
    np.testing.assert_array_equal(client.embed(["card arrival status"]).vectors, known)
    with pytest.raises(EmbedderUnavailable, match=r"unreachable.*is it running"):
        client.embed(["a phrase never seen"])
    client.close()


def test_remote_client_retries_transient_failures_only(encoder):
    """A fault-injecting front answers 503 twice, then serves real vectors; 422 and 429 are
    not retried."""
    calls = Counter()

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body, content_type="application/json", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            info = {
                "model": encoder.name,
                "fingerprint": encoder.fingerprint,
                "dimension": 384,
                "limits": {"max_texts_per_request": 8},
            }
            self._send(200, json.dumps(info).encode())

        def do_POST(self):
            texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
            calls[texts[0]] += 1
            if texts[0] == "invalid":
                error = {"error": {"code": "invalid_input", "message": "no", "status": 422}}
                return self._send(422, json.dumps(error).encode())
            if texts[0] == "busy":
                error = {"error": {"code": "overloaded", "message": "full", "status": 429}}
                return self._send(429, json.dumps(error).encode(), headers=[("Retry-After", "7")])
            if calls[texts[0]] <= 2:
                return self._send(
                    503, b'{"error": {"code": "not_ready", "message": "warming", "status": 503}}'
                )
            headers = [
                ("X-Embedder-Fingerprint", encoder.fingerprint),
                ("X-Embedding-Dimension", "384"),
                ("X-Embedding-Count", str(len(texts))),
            ]
            self._send(
                200, vectors_to_bytes(encoder.encode(texts)), "application/octet-stream", headers
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RemoteEmbedder(
            f"http://127.0.0.1:{server.server_port}", cache_size=10, retries=3, backoff_s=0.01
        )
        result = client.embed(["eventually fine"])
        assert calls["eventually fine"] == 3
        np.testing.assert_allclose(result.vectors, encoder.encode(["eventually fine"]), atol=1e-6)
        with pytest.raises(InvalidInput):
            client.embed(["invalid"])
        assert calls["invalid"] == 1
        with pytest.raises(Overloaded) as overloaded:  # back-pressure reaches the caller at once
            client.embed(["busy"])
        assert calls["busy"] == 1 and overloaded.value.retry_after_s == 7
        client.close()
    finally:
        server.shutdown()


def test_a_restarted_embedder_reads_the_cache_snapshot_its_predecessor_wrote_on_sigterm(
    tmp_path,
):
    """Warm start: SIGTERM writes the phrase cache (gunicorn's worker_exit); the next start
    reads it, so its first answers for those phrases come from the cache."""
    snapshot = tmp_path / "cache" / "embedder-snapshot.npz"
    env = {**SERVICE_ENV, "DC_CACHE_SNAPSHOT": str(snapshot), "DC_LOG_LEVEL": "INFO"}
    phrases = [f"warm start phrase {i}: where is my card?" for i in range(20)] + ["Straße 💳"]

    with run_gunicorn("embedder/gunicorn.conf.py", env) as (url, _proc):
        info = requests.get(url + "/info", timeout=10).json()["warm_start"]
        assert info["snapshot"]["state"] == "absent" and info["prewarm"]["state"] == "skipped"
        first = requests.post(url + "/embed", json={"texts": phrases}, timeout=30)
        assert first.headers["X-Embedding-Cached"] == "0" * len(phrases)
        vectors = np.array(first.json()["vectors"], dtype=np.float32)
    assert snapshot.exists()  # written when the context's SIGTERM stopped the worker

    with run_gunicorn("embedder/gunicorn.conf.py", env) as (url, _proc):
        info = requests.get(url + "/info", timeout=10).json()
        assert info["warm_start"]["snapshot"]["state"] == "loaded"
        assert info["warm_start"]["snapshot"]["entries"] == len(phrases)
        assert info["cache"]["size"] == len(phrases)
        again = requests.post(
            url + "/embed",
            json={"texts": phrases},
            headers={"Accept": "application/octet-stream"},
            timeout=30,
        )
        assert again.status_code == 200
        assert again.headers["X-Embedding-Cached"] == "1" * len(phrases)
        restored = np.frombuffer(again.content, dtype="<f4").reshape(len(phrases), -1)
        np.testing.assert_allclose(restored, vectors, atol=1e-6)
        metrics = requests.get(url + "/metrics", timeout=10).text
        assert 'embedder_warm_start_phrases{source="snapshot"} 21.0' in metrics

        # An API worker starting now fills its own phrase cache from this embedder's.
        client = RemoteEmbedder(url, cache_size=1000, retries=0)
        assert client.warm_from_service(1000) == len(phrases)
        result = client.embed(phrases)
        assert all(result.cached)
        np.testing.assert_allclose(result.vectors, vectors, atol=1e-6)
        assert RemoteEmbedder(url, cache_size=1000, retries=0).warm_from_service(5) == 5
        too_many = str(info["cache"]["maxsize"] + 1)
        for bad in ("-1", "x", "1.5", "٣", " 1", too_many):
            refused = requests.get(url + "/snapshot", params={"limit": bad}, timeout=10)
            assert refused.status_code == 422, bad
            assert refused.json()["error"]["code"] == "invalid_input"
        refused = requests.get(url + "/snapshot", params={"limit": 1, "other": 2}, timeout=10)
        assert refused.status_code == 422


def test_a_client_warm_start_without_an_embedder_is_a_log_line_not_an_error(caplog):
    client = RemoteEmbedder(f"http://127.0.0.1:{free_port()}", cache_size=100, retries=0)
    with caplog.at_level("WARNING", logger="dc.nlp.embeddings.remote"):
        assert client.warm_from_service(100) == 0
    assert "no warm start from the embedder's cache" in caplog.text
    assert client.cache.stats().size == 0
