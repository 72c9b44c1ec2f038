"""Fixtures chain from the factory: settings -> encoder -> engine -> app -> client.

The encoder is the real exported SavedModel (built by `make setup`), loaded once per session.
Servers are real gunicorn processes on free loopback ports, started by `run_gunicorn`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from dc.config import Settings

REPO = Path(__file__).resolve().parent.parent


def make_settings(**overrides) -> Settings:
    """Small limits so tests reach them quickly; everything else as configured."""
    values = dict(
        cache_size=1000,
        max_batch_size=8,
        max_queue=64,
        max_texts_per_request=32,
        max_text_chars=500,
        log_level="WARNING",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def encoder(settings):
    from dc.nlp.encoder import load_encoder

    return load_encoder(settings.embedder_handle)


@pytest.fixture
def engine(encoder, settings):
    from dc.nlp.embeddings import LocalEmbedder

    engine = LocalEmbedder.from_encoder(encoder, settings)
    yield engine
    engine.close()


@pytest.fixture
def app(settings, engine):
    from embedder.app import create_app

    return create_app(settings, engine=engine)


@pytest.fixture
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_gunicorn(
    config: str, env: dict[str, str], ready_path: str = "/ready", timeout_s: float = 180
):
    """Start gunicorn with `config` and DC_* `env`, wait until `ready_path` answers 200.

    Yields (base_url, process). The server is stopped with SIGTERM (then SIGKILL) on exit.
    """
    port = free_port()
    full_env = {**os.environ, **env, "DC_EMBEDDER_HOST": "127.0.0.1", "DC_EMBEDDER_PORT": str(port)}
    log_path = REPO / "var" / "test-logs" / f"gunicorn-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", config],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()}"
                )
            try:
                if requests.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"gunicorn not ready after {timeout_s} s:\n{log_path.read_text()}"
                )
            time.sleep(0.25)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
