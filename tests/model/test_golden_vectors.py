"""The exported encoder reproduces sentence-transformers' all-MiniLM-L6-v2 on every golden phrase.

tests/golden/minilm_golden.json is written by the dev-only scripts/make_golden_vectors.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dc.nlp.export import METADATA_FILE, compute_fingerprint, find_minilm_source

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "minilm_golden.json"
TOLERANCE = 1e-5  # measured: ~3e-7
BATCHING_TOLERANCE = 1e-6  # the same model on different paddings: float rounding only


@pytest.fixture(scope="module")
def golden() -> dict:
    data = json.loads(GOLDEN.read_text(encoding="ascii"))
    data["vectors"] = np.asarray(data["vectors"], dtype=np.float32)
    return data


def encode_in_batches(encoder, phrases: list[str], batch_size: int) -> np.ndarray:
    chunks = [phrases[i : i + batch_size] for i in range(0, len(phrases), batch_size)]
    return np.concatenate([encoder.encode(chunk) for chunk in chunks])


def assert_matches_golden(vectors: np.ndarray, golden: dict, what: str) -> None:
    assert vectors.shape == golden["vectors"].shape, what
    per_phrase = np.abs(vectors - golden["vectors"]).max(axis=1)
    worst = int(per_phrase.argmax())
    failing = int((per_phrase >= TOLERANCE).sum())
    assert per_phrase[worst] < TOLERANCE, (
        f"{what}: {failing} of {len(per_phrase)} phrases differ by >= {TOLERANCE}; worst "
        f"{per_phrase[worst]:.3g} on phrase {worst}: {golden['phrases'][worst][:120]!r}"
    )


def test_golden_file_covers_the_hard_cases(golden):
    phrases = golden["phrases"]
    assert len(phrases) >= 120
    assert len(golden["vectors"]) == len(phrases)
    assert golden["vectors"].shape[1] == 384
    for case in ("", "Straße", "\x00", "\u200d", "\ufffd", "e\u0301", "😀", "我", "[MASK]"):
        assert any(case in phrase for phrase in phrases), repr(case)
    assert max(len(phrase.split()) for phrase in phrases) >= 400  # far beyond 256 tokens


@pytest.fixture(scope="module")
def one_batch(encoder, golden) -> np.ndarray:
    """All golden phrases encoded in a single call (padded to the longest, 256 tokens)."""
    return encoder.encode(golden["phrases"])


def test_every_phrase_matches_sentence_transformers(encoder, golden, one_batch):
    assert encoder.dimension == 384
    assert_matches_golden(one_batch, golden, "one batch")


@pytest.mark.parametrize("batch_size", [1, 7])
def test_batching_and_padding_do_not_change_vectors(encoder, golden, one_batch, batch_size):
    batched = encode_in_batches(encoder, golden["phrases"], batch_size)
    assert_matches_golden(batched, golden, f"batches of {batch_size}")
    np.testing.assert_allclose(batched, one_batch, rtol=0, atol=BATCHING_TOLERANCE)


def test_vectors_are_unit_length_float32(one_batch):
    assert one_batch.dtype == np.float32 and one_batch.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(one_batch, axis=1), 1.0, atol=1e-5)


def test_empty_batch(encoder):
    assert encoder.encode([]).shape == (0, encoder.dimension)


def test_fingerprint_is_deterministic_and_matches_the_export(encoder):
    source = find_minilm_source()
    fingerprint = compute_fingerprint(source)
    assert fingerprint == compute_fingerprint(source)
    metadata = json.loads((Path(encoder.handle) / METADATA_FILE).read_text())
    assert metadata["fingerprint"] == fingerprint == encoder.fingerprint
    assert metadata["dimension"] == encoder.dimension == 384
    assert metadata["max_tokens"] == 256
