"""Request validation: turn an HTTP request into checked values, or raise a `dc.errors` type.

Nothing here knows about models or embeddings; the rules are the transport's contract, which
`/openapi.json` publishes (`api/openapi.py`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Request

from dc.config import Settings
from dc.errors import Forbidden, InvalidInput, TooLarge, Unauthorized
from dc.feedback import DEFAULT_SOURCE, FeedbackItem
from dc.nlp.validation import check_phrase, json_type, validate_text, validate_texts
from dc.utilities.times import utc_time
from web.body import json_body as read_json_body

PREDICT_FIELDS = ("text", "texts", "k")
PROMOTE_FIELDS = ("version", "force")
FEEDBACK_FIELDS = ("request_id", "item", "label", "source", "time")


@dataclass(frozen=True)
class PredictRequest:
    """A checked prediction request.

    Attributes:
        texts: the texts to classify (one for a `{"text": ...}` body).
        k: how many classes to return per text, best first.
        single: the body was `{"text": ...}`, so the answer is one prediction, not a list.
    """

    texts: list[str]
    k: int
    single: bool


def json_body(request: Request) -> Any:
    """The decoded JSON body, read within the app's body limit (`web.body.json_body`).

    Raises:
        TooLarge: a body over the limit, chunked or not.
        UnsupportedMediaType: a body that is not declared as application/json.
        MalformedRequest: a body that cannot be read or does not decode as UTF-8 JSON.
    """
    return read_json_body(request, request.max_content_length)


def parse_predict(payload: Any, settings: Settings) -> PredictRequest:
    """Check a `/predict` body: `{"text": str}` or `{"texts": [str, ...]}`, and an optional `k`.

    Raises:
        InvalidInput: not an object, unknown fields, both or neither of text/texts, a text that is
            not a string, blank (empty, or only whitespace and invisible characters), longer
            than `max_text_chars`, not valid Unicode or holding NUL, or `k` not an integer in
            1..`max_top_k` (an integral number such as 14.0 counts as one).
        TooLarge: more than `max_texts_per_request` texts (413).
    """
    if not isinstance(payload, dict):
        raise InvalidInput('the body must be a JSON object like {"text": "..."}')
    unknown = sorted(set(payload) - set(PREDICT_FIELDS))
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(PREDICT_FIELDS)}"
        )
    if ("text" in payload) == ("texts" in payload):
        raise InvalidInput('give exactly one of "text" (a string) or "texts" (a list of strings)')
    single = "text" in payload
    if single:
        checked = [validate_text(payload["text"], max_chars=settings.max_text_chars)]
        fields = ["text"]
    else:
        checked = validate_texts(
            payload,
            max_texts=settings.max_texts_per_request,
            max_chars=settings.max_text_chars,
        )
        fields = [f"texts[{i}]" for i in range(len(checked))]
    for field, text in zip(fields, checked, strict=True):
        # Not blank, no NUL: every prediction is logged, and PostgreSQL text cannot hold NUL,
        # so refuse it here rather than answer a prediction whose log row could never be written.
        check_phrase(text, max_chars=settings.max_text_chars, field=field)
    return PredictRequest(texts=checked, k=_parse_k(payload.get("k"), settings), single=single)


def _parse_k(value: Any, settings: Settings) -> int:
    if value is None:
        return min(settings.default_top_k, settings.max_top_k)
    # JSON has one number type: 14.0 is the integer 14 (as JSON Schema, and so /openapi.json,
    # has it); 2.5, NaN and true are not integers.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f'"k" must be an integer, not {json_type(value)}')
    if not 1 <= value <= settings.max_top_k:
        raise InvalidInput(f'"k" must be between 1 and {settings.max_top_k}, got {value}')
    return value


def parse_promote(payload: Any) -> tuple[str, bool]:
    """Check an admin promote body `{"version": str, "force": bool}`; returns (version, force)."""
    if not isinstance(payload, dict):
        raise InvalidInput('the body must be a JSON object like {"version": "..."}')
    unknown = sorted(set(payload) - set(PROMOTE_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(map(repr, unknown))}")
    version, force = payload.get("version"), payload.get("force", False)
    if not isinstance(version, str) or not version.strip():
        raise InvalidInput('"version" must be a non-empty string')
    if not isinstance(force, bool):
        raise InvalidInput(f'"force" must be a boolean, not {json_type(force)}')
    return version, force


def check_admin_token(request: Request, settings: Settings) -> None:
    """Require `Authorization: Bearer <DC_ADMIN_TOKEN>`.

    Raises:
        Forbidden: no token is configured (the admin endpoints are off).
        Unauthorized: the header is missing or the token is wrong.
    """
    _check_bearer(
        request,
        settings.admin_token,
        kind="admin",
        disabled="the admin endpoints are disabled: set DC_ADMIN_TOKEN to enable them",
    )


def check_feedback_token(request: Request, settings: Settings) -> None:
    """Require `Authorization: Bearer <DC_FEEDBACK_TOKEN>` (as `check_admin_token`)."""
    _check_bearer(
        request,
        settings.feedback_token,
        kind="feedback",
        disabled="POST /feedback is disabled: set DC_FEEDBACK_TOKEN to enable it",
    )


def _check_bearer(request: Request, token: str, *, kind: str, disabled: str) -> None:
    """`Authorization: Bearer <token>`, or Forbidden(`disabled`) when no token is configured."""
    if not token:
        raise Forbidden(disabled)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Constant-time comparison: the answer's timing must not reveal how much of a guess matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Unauthorized(f"missing or wrong {kind} token (Authorization: Bearer <token>)")


def parse_feedback(payload: Any, settings: Settings) -> tuple[list[FeedbackItem], bool]:
    """Check a `/feedback` body: one item `{"request_id", "item", "label", "source"?, "time"?}`
    or `{"items": [item, ...]}`; returns (the items, whether it was a single item).

    Raises:
        InvalidInput: not an object, unknown fields, a field of the wrong type or empty, an
            item that is not a non-negative integer, a time that is not ISO 8601 with an offset.
        TooLarge: more than `max_feedback_items` items (413).
    """
    if not isinstance(payload, dict):
        raise InvalidInput(
            'the body must be a JSON object like {"request_id": ..., "item": 0, "label": ...}'
        )
    if "items" in payload:
        if set(payload) != {"items"}:
            raise InvalidInput('a batch is {"items": [...]} and nothing else')
        entries = payload["items"]
        if not isinstance(entries, list) or not entries:
            raise InvalidInput('"items" must be a non-empty list of feedback objects')
        if len(entries) > settings.max_feedback_items:
            raise TooLarge(
                f"at most {settings.max_feedback_items} feedback items per request, "
                f"got {len(entries)}"
            )
        return [_feedback_item(entry, f"items[{i}]") for i, entry in enumerate(entries)], False
    return [_feedback_item(payload, "the body")], True


def _feedback_item(entry: Any, where: str) -> FeedbackItem:
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where} must be an object, not {json_type(entry)}")
    unknown = sorted(set(entry) - set(FEEDBACK_FIELDS))
    if unknown:
        raise InvalidInput(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(FEEDBACK_FIELDS)}"
        )
    strings = {}
    for name, limit in (("request_id", 64), ("label", 200), ("source", 100)):
        value = entry.get(name, DEFAULT_SOURCE if name == "source" else None)
        if not isinstance(value, str) or not value.strip() or len(value) > limit or "\x00" in value:
            raise InvalidInput(
                f'{where}: "{name}" must be a non-empty string of at most {limit} characters'
            )
        strings[name] = value
    item = entry.get("item")
    if isinstance(item, float) and item.is_integer():
        item = int(item)
    if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 2**31:
        raise InvalidInput(
            f'{where}: "item" must be a non-negative integer '
            "(the prediction's index in its request)"
        )
    when = entry.get("time")
    if when is not None:
        try:
            when = datetime.fromisoformat(when) if isinstance(when, str) else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise InvalidInput(
                f'{where}: "time" must be an ISO 8601 time with its offset, '
                "e.g. 2026-12-01T10:00:00Z"
            )
    return FeedbackItem(strings["request_id"], item, strings["label"], strings["source"], when)


@dataclass(frozen=True)
class ReportQuery:
    """The checked query string of `/reports/<model>` and `/dashboard/<model>`."""

    region: str
    start: datetime
    end: datetime
    granularity: str
    version: str | None
    compare: str | None


REPORT_PARAMETERS = ("region", "start", "end", "days", "granularity", "version", "compare")
DEFAULT_REPORT_DAYS = 7
MAX_REPORT_DAYS = 400


def parse_report_query(args: Any, settings: Settings, now: datetime) -> ReportQuery:
    """Check a report's query string: the window as `start` and `end` (ISO 8601; a time without
    an offset is UTC) or as the last `days` days up to `end` (default: the next full hour, 7
    days); `granularity` hour, day or week (default day); optional `region` (default: the
    served region), `version` and `compare` (a second version).

    The window's own rules (not empty, not too long, not too many buckets) are the core's
    (`dc.reports.ReportRequest.checked`).

    Raises:
        InvalidInput: an unknown or repeated parameter, a time that is not ISO 8601, `days` not
            an integer in 1..400, `days` together with `start`, a name too long.
    """
    unknown = sorted(set(args) - set(REPORT_PARAMETERS))
    if unknown:
        raise InvalidInput(
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(REPORT_PARAMETERS)}"
        )
    for name in args:
        if len(args.getlist(name)) > 1:
            raise InvalidInput(f"parameter {name!r} is given more than once")
    end = _report_time(args, "end") or now.replace(minute=0, second=0, microsecond=0) + timedelta(
        hours=1
    )
    start = _report_time(args, "start")
    if "days" in args:
        if start is not None:
            raise InvalidInput("give 'start' or 'days', not both")
        days = args["days"]
        if not days.isascii() or not days.isdigit() or not 1 <= int(days) <= MAX_REPORT_DAYS:
            raise InvalidInput(f"'days' must be an integer from 1 to {MAX_REPORT_DAYS}")
        start = _days_before(end, int(days))
    elif start is None:
        start = _days_before(end, DEFAULT_REPORT_DAYS)
    names = {}
    for name, limit in (("region", 50), ("version", 40), ("compare", 40)):
        value = args.get(name)
        if value is not None and (not value.strip() or len(value) > limit or "\x00" in value):
            raise InvalidInput(f"{name!r} must be a non-empty name of at most {limit} characters")
        names[name] = value
    return ReportQuery(
        region=names["region"] or settings.serving_region,
        start=start,
        end=end,
        granularity=args.get("granularity", "day"),
        version=names["version"],
        compare=names["compare"],
    )


def _days_before(end: datetime, days: int) -> datetime:
    try:
        return end - timedelta(days=days)
    except OverflowError:
        raise InvalidInput("'end' is too early for the window it asks for") from None


def _report_time(args: Any, name: str) -> datetime | None:
    value = args.get(name)
    if value is None:
        return None
    try:
        return utc_time(value)
    except ValueError:
        raise InvalidInput(
            f"{name!r} must be an ISO 8601 time such as 2026-12-01 or 2026-12-01T10:00:00Z"
        ) from None
