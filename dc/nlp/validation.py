"""Rules for texts arriving from outside, shared by every transport."""

from __future__ import annotations

from typing import Any

from dc.errors import InvalidInput, TooLarge


def validate_texts(
    payload: Any, *, max_texts: int, max_chars: int, field: str = "texts"
) -> list[str]:
    """Check a decoded JSON body of the form {"texts": [str, ...]} and return the texts.

    Empty and whitespace-only strings are valid inputs for the embedder (they have a
    well-defined vector); classification endpoints apply stricter rules of their own.

    Raises:
        InvalidInput: the body is not an object, the field is missing or not a list, the list is
            empty, an item is not a string, a text is longer than `max_chars`, or a text holds
            an unpaired surrogate (which has no UTF-8 form).
        TooLarge: more than `max_texts` texts.
    """
    if not isinstance(payload, dict):
        raise InvalidInput(f'the body must be a JSON object like {{"{field}": ["..."]}}')
    if field not in payload:
        raise InvalidInput(f'the body must have a "{field}" field (a list of strings)')
    texts = payload[field]
    if not isinstance(texts, list):
        raise InvalidInput(f'"{field}" must be a list of strings, not {json_type(texts)}')
    if not texts:
        raise InvalidInput(f'"{field}" must not be empty')
    if len(texts) > max_texts:
        raise TooLarge(f'"{field}" has {len(texts)} items; at most {max_texts} are accepted')
    for i, text in enumerate(texts):
        validate_text(text, max_chars=max_chars, field=f"{field}[{i}]")
    return texts


def validate_text(text: Any, *, max_chars: int, field: str = "text") -> str:
    """Check one text from a decoded JSON body and return it.

    Raises:
        InvalidInput: not a string, longer than `max_chars`, or holding an unpaired surrogate
            (which has no UTF-8 form). The message names `field`.
    """
    if not isinstance(text, str):
        raise InvalidInput(f'"{field}" must be a string, not {json_type(text)}')
    if len(text) > max_chars:
        raise InvalidInput(
            f'"{field}" has {len(text)} characters; at most {max_chars} are accepted'
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON allows "\ud800"; UTF-8 (and the encoder) do not
        raise InvalidInput(
            f'"{field}" is not valid Unicode (an unpaired surrogate at {exc.start})'
        ) from None
    return text


def json_type(value: Any) -> str:
    """How a decoded JSON value is named in error messages ("a list", "null", ...)."""
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    for kind, name in names.items():
        if type(value) is kind:
            return name
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def max_body_bytes(max_texts: int, max_chars: int) -> int:
    """The largest request body worth reading for `max_texts` texts of `max_chars` characters.

    Leaves room for JSON escapes (up to 12 bytes a character, as in "\\ud83d\\ude00"), so the
    per-text limits, with their clearer messages, are what callers normally meet; the body
    limit only stops absurd bodies before they are read.
    """
    return max_texts * (max_chars * 12 + 8) + 4096
