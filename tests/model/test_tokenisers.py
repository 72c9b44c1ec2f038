"""The ONNX backends' tokeniser (HF `tokenizers` on the shipped tokenizer.json) gives the TF graph's
token ids: on the golden phrases, the naughty strings and every phrase of the bundled datasets."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dc.nlp.export import MAX_TOKENS
from dc.nlp.onnx_export import ONNX_DIR, TOKENIZER_FILE
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def phrase_sets() -> dict[str, list[str]]:
    corpus = json.loads((REPO / "tests" / "corpus" / "naughty_strings.json").read_text())
    sets = {
        "golden": json.loads((REPO / "tests" / "golden" / "minilm_golden.json").read_text())[
            "phrases"
        ],
        # (what UTF-8 can carry: the services refuse lone surrogates before any tokeniser)
        "naughty strings": [
            s for key in ("blns", "own") for s in corpus[key] if isinstance(s, str) and utf8(s)
        ],
    }
    for path in sorted((REPO / "data").glob("*/*.csv")):
        with path.open(newline="", encoding="utf-8") as file:
            sets[f"{path.parent.name}/{path.name}"] = [row["text"] for row in csv.DictReader(file)]
    return sets


@pytest.fixture(scope="module")
def graph_tokenise(settings):
    import tensorflow as tf
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401 - registers the graph's ops

    model = hub.load(settings.embedder_handle)
    return lambda texts: model.tokenize(tf.constant(texts)).numpy()


@pytest.fixture(scope="module")
def tokenizer(settings):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(f"{settings.embedder_handle}/{ONNX_DIR}/{TOKENIZER_FILE}")
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    return tokenizer


def test_the_sets_are_the_real_ones():
    sets = phrase_sets()
    assert len(sets["banking77/train.csv"]) == 10_003
    assert len(sets["clinc150/train.csv"]) >= 15_000
    assert len(sets["naughty strings"]) > 500


@pytest.mark.parametrize("name", list(phrase_sets()))
def test_both_tokenisers_give_the_same_ids(name, graph_tokenise, tokenizer):
    texts = phrase_sets()[name]
    differ = []
    for start in range(0, len(texts), 1024):
        chunk = texts[start : start + 1024]
        padded = graph_tokenise(chunk)
        for row, text, encoding in zip(padded, chunk, tokenizer.encode_batch(chunk), strict=True):
            ids = np.asarray(encoding.ids)
            if not (np.array_equal(row[: len(ids)], ids) and not row[len(ids) :].any()):
                differ.append(text)
    assert not differ, f"{len(differ)} of {len(texts)} differ, e.g. {differ[:3]!r}"
