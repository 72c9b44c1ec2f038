"""Every encoder backend reproduces sentence-transformers' all-MiniLM-L6-v2 on every golden phrase.

The fp32 backends (the TF SavedModel and ONNX Runtime on the ONNX export) to 1e-5; the int8 one
(its own fingerprint) to a cosine bound, as quantisation allows.
tests/golden/minilm_golden.json is written by the dev-only scripts/make_golden_vectors.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dc.nlp.encoder import BACKENDS, load_encoder
from dc.nlp.export import METADATA_FILE, compute_fingerprint, find_minilm_source
from dc.nlp.onnx_export import ONNX_DIR, int8_fingerprint

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "minilm_golden.json"
TOLERANCE = 1e-5  # measured: ~3e-7
BATCHING_TOLERANCE = 1e-6  # the same model on different paddings: float rounding only
# int8 against fp32, per phrase (measured on the golden phrases: min 0.971, mean 0.991). Its
# activations are quantised per call, so a vector also depends a little on its batch.
INT8_MIN_COSINE, INT8_MEAN_COSINE, INT8_BATCH_COSINE = 0.95, 0.985, 0.95
FP32_BACKENDS = [backend for backend in BACKENDS if backend != "onnx-int8"]


@pytest.fixture(scope="module", params=BACKENDS)
def encoder(request, settings):
    """The encoder on each backend in turn (the conftest's one is the service's backend only)."""
    return load_encoder(
        settings.embedder_handle,
        request.param,
        intra_op_threads=1,
        inter_op_threads=2,
        length_batch=settings.encoder_length_batch,
    )


fp32 = pytest.mark.parametrize("encoder", FP32_BACKENDS, indirect=True)


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


@fp32
def test_every_phrase_matches_sentence_transformers(encoder, golden, one_batch):
    assert encoder.dimension == 384
    assert_matches_golden(one_batch, golden, "one batch")


@fp32
@pytest.mark.parametrize("batch_size", [1, 7])
def test_batching_and_padding_do_not_change_vectors(encoder, golden, one_batch, batch_size):
    batched = encode_in_batches(encoder, golden["phrases"], batch_size)
    assert_matches_golden(batched, golden, f"batches of {batch_size}")
    np.testing.assert_allclose(batched, one_batch, rtol=0, atol=BATCHING_TOLERANCE)


@pytest.mark.parametrize("encoder", ["onnx"], indirect=True)  # the TF graph tokenises inside
def test_length_aware_batching_keeps_the_order_and_the_vectors(encoder, golden, one_batch):
    whole = load_encoder(encoder.handle, encoder.backend, intra_op_threads=1, length_batch=0)
    chunked = load_encoder(encoder.handle, encoder.backend, intra_op_threads=1, length_batch=5)
    backwards = golden["phrases"][::-1]
    np.testing.assert_allclose(
        chunked.encode(backwards), whole.encode(backwards), rtol=0, atol=BATCHING_TOLERANCE
    )
    np.testing.assert_allclose(
        chunked.encode(golden["phrases"]), one_batch, rtol=0, atol=BATCHING_TOLERANCE
    )


@pytest.mark.parametrize("encoder", ["onnx-int8"], indirect=True)
def test_int8_stays_close_to_sentence_transformers(encoder, golden, one_batch):
    cosine = (one_batch * golden["vectors"]).sum(axis=1)
    worst = int(cosine.argmin())
    assert cosine[worst] >= INT8_MIN_COSINE, golden["phrases"][worst][:120]
    assert cosine.mean() >= INT8_MEAN_COSINE
    single = encode_in_batches(encoder, golden["phrases"], 1)
    assert (single * one_batch).sum(axis=1).min() >= INT8_BATCH_COSINE


def test_vectors_are_unit_length_float32(one_batch):
    assert one_batch.dtype == np.float32 and one_batch.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(one_batch, axis=1), 1.0, atol=1e-5)


def test_empty_batch(encoder):
    assert encoder.encode([]).shape == (0, encoder.dimension)


def test_fingerprint_is_deterministic_and_matches_the_export(encoder):
    """fp32 backends share the weights' fingerprint (same vectors); int8 has its own."""
    source = find_minilm_source()
    fingerprint = compute_fingerprint(source)
    assert fingerprint == compute_fingerprint(source)
    saved_model = json.loads((Path(encoder.handle) / METADATA_FILE).read_text())
    onnx = json.loads((Path(encoder.handle) / ONNX_DIR / METADATA_FILE).read_text())
    assert saved_model["fingerprint"] == fingerprint == onnx["variants"]["fp32"]["fingerprint"]
    assert onnx["variants"]["int8"]["fingerprint"] == int8_fingerprint(fingerprint) != fingerprint
    expected = int8_fingerprint(fingerprint) if encoder.backend == "onnx-int8" else fingerprint
    assert encoder.fingerprint == expected
    assert saved_model["dimension"] == onnx["dimension"] == encoder.dimension == 384
    assert saved_model["max_tokens"] == onnx["max_tokens"] == 256
