"""Helpers of the warm-start tests: a small deterministic encoder (no TensorFlow) and
inference-log rows."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime

import numpy as np

from tests.conftest import make_settings

DIMENSION = 8


class FakeEncoder:
    """Encoder-shaped: a text's vector is derived from its SHA-256; records the texts encoded."""

    name = "fake-encoder"
    handle = "fake"
    backend = "fake"
    dimension = DIMENSION

    def __init__(self, fingerprint: str = "fake-fp-1") -> None:
        self.fingerprint = fingerprint
        self.encoded: list[str] = []
        self._lock = threading.Lock()

    def encode(self, texts):
        with self._lock:
            self.encoded.extend(texts)
        return np.stack([vector_of(text) for text in texts])


def vector_of(text: str) -> np.ndarray:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return np.frombuffer(digest[: DIMENSION * 4], dtype=np.uint32).astype(np.float32) / 2**32


def fake_engine(fingerprint: str = "fake-fp-1", **overrides):
    """A real `LocalEmbedder` (cache, micro-batcher) on a `FakeEncoder`, and its settings."""
    from dc.nlp.embeddings import LocalEmbedder

    settings = make_settings(**overrides)
    return LocalEmbedder.from_encoder(FakeEncoder(fingerprint), settings), settings


def inference_rows(texts_at: list[tuple[str, datetime]]) -> list[dict]:
    """One `inferences` row per (text, time)."""
    return [
        dict(
            request_id=f"req-{i}",
            item=0,
            created_at=created,
            model="banking77",
            region="eu",
            version="v0001",
            model_type="keras-mlp",
            input_text=text,
            predicted_label="card_arrival",
            probability=0.9,
            top_k=[{"label": "card_arrival", "probability": 0.9}],
            latency_ms=1.0,
            cache_hit=False,
            embedder_fingerprint="fake-fp-1",
            client_request_id=None,
        )
        for i, (text, created) in enumerate(texts_at)
    ]


def frequent_log(now: datetime, nul: bool = True) -> list[tuple[str, datetime]]:
    """A day of log: "top" 5 times, "second" 3 times, "third" twice, three texts the phrase
    rules refuse 6 times each (blank, with a NUL, too long; PostgreSQL cannot store a NUL, so
    without `nul` another blank one), and a text used often but two days ago."""
    from datetime import timedelta

    recent = now - timedelta(hours=2)
    old = now - timedelta(days=2)
    rows = [("top", recent)] * 5 + [("second", recent)] * 3 + [("third", recent)] * 2
    rows += (
        [("   ", recent)] * 6
        + [("nul\x00inside" if nul else "\t\n", recent)] * 6
        + [("x" * 600, recent)] * 6
    )
    rows += [("two days ago", old)] * 9
    return rows
