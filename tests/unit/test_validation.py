"""Input rules for /embed bodies."""

import pytest

from dc.errors import InvalidInput, TooLarge
from dc.nlp.validation import validate_texts


def check(payload, max_texts=3, max_chars=10):
    return validate_texts(payload, max_texts=max_texts, max_chars=max_chars)


def test_valid_texts_pass_through_unchanged_including_empty_and_odd_unicode():
    texts = ["", "   ", "straße", "ｈｉ", "🙂"]
    assert check({"texts": texts}, max_texts=5) == texts


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (["a"], "JSON object"),
        ("a", "JSON object"),
        (None, "JSON object"),
        ({}, 'a "texts" field'),
        ({"text": ["a"]}, 'a "texts" field'),
        ({"texts": "a"}, "not a string"),
        ({"texts": {"a": 1}}, "not an object"),
        ({"texts": []}, "must not be empty"),
        ({"texts": ["a", 1]}, '"texts[1]" must be a string, not a number'),
        ({"texts": [None]}, "not null"),
        ({"texts": [["a"]]}, "not a list"),
        ({"texts": [True]}, "not a boolean"),
        ({"texts": ["x" * 11]}, "11 characters; at most 10"),
        ({"texts": ["ok", "bad \ud800"]}, "unpaired surrogate at 4"),
    ],
)
def test_invalid_payloads_name_the_problem(payload, fragment):
    with pytest.raises(InvalidInput, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        check(payload)


def test_too_many_texts_is_too_large():
    with pytest.raises(TooLarge, match="4 items; at most 3"):
        check({"texts": ["a"] * 4})
