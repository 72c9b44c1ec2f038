"""Rules for texts arriving from outside, shared by every transport."""

from __future__ import annotations

import unicodedata
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


# Characters that show nothing on their own: Unicode's Default_Ignorable_Code_Point set
# (DerivedCoreProperties.txt: zero-width spaces and joiners, bidi controls, variation selectors,
# fillers, tags...) and the Braille blank. With whitespace, control and format characters and
# combining marks without a base (categories Z*, Cc, Cf, Mn, Me), a text made only of these has
# nothing to classify: the encoder's tokeniser drops most of them and sees an empty phrase.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})


def _invisible(char: str) -> bool:
    point = ord(char)
    if any(low <= point <= high for low, high in _INVISIBLE_RANGES):
        return True
    return unicodedata.category(char) in _INVISIBLE_CATEGORIES


def blank_kind(text: str) -> str | None:
    """Why `text` has nothing to classify, or None when it has a visible character.

    Returns:
        "empty", "whitespace only", or "only invisible characters" (zero-width spaces, joiners,
        bidi and format controls, fillers, combining marks without a base, mixed with
        whitespace or not). Whitespace-only and invisible-only texts are treated alike.
    """
    if not text:
        return "empty"
    if text.isspace():
        return "whitespace only"
    if all(char.isspace() or _invisible(char) for char in text):
        return "only invisible characters"
    return None


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


def check_phrase(text: Any, *, max_chars: int, field: str = "text") -> str:
    """The rules of a phrase to classify, wherever it comes from (an API request, a batch job's
    input row): `validate_text`'s, and it must not be blank (`blank_kind`) or hold a NUL
    (every prediction is logged, and PostgreSQL text cannot hold NUL).

    Raises:
        InvalidInput: the message names `field` and the broken rule.
    """
    text = validate_text(text, max_chars=max_chars, field=field)
    blank = blank_kind(text)
    if blank is not None:
        raise InvalidInput(f'"{field}" is {blank}; send the phrase to classify')
    if "\x00" in text:
        raise InvalidInput(f'"{field}" contains a NUL character (\\u0000)')
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
