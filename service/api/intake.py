"""HTTP intake: request bodies into validated events, with every error reported.

``POST /events`` must validate exactly like the Kafka path and produce nothing
when any item is bad, so the whole batch is checked before anything is sent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.decode import Rejected, validate_event
from schemas.events import TOPIC_TYPES, Event

__all__ = [
    "TYPE_TOPIC_KIND",
    "BodyError",
    "ValidatedItem",
    "parse_events_body",
    "pulse_body_to_event",
    "validate_batch",
]

#: event type -> topic kind (``login`` -> ``login``, ``survey`` -> ``engagement``...).
TYPE_TOPIC_KIND: dict[str, str] = {
    event_type: kind for kind, types in TOPIC_TYPES.items() for event_type in types
}

#: Largest number of events one request may carry.
MAX_BATCH = 10_000


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, wrong shape, too many items)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ValidatedItem:
    event: Event
    topic_kind: str
    value: bytes


def parse_events_body(body: bytes, content_type: str) -> list[Any]:
    """One JSON object, a JSON array of objects, or NDJSON (``application/x-ndjson``)."""
    if not body.strip():
        raise BodyError("empty", "the request body is empty")
    try:
        if content_type.split(";")[0].strip() == "application/x-ndjson":
            items: list[Any] = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        else:
            parsed = orjson.loads(body)
            items = parsed if isinstance(parsed, list) else [parsed]
    except orjson.JSONDecodeError as exc:
        raise BodyError("not_json", f"the body is not valid JSON: {exc}") from exc
    if not items:
        raise BodyError("empty", "the batch holds no events")
    if len(items) > MAX_BATCH:
        raise BodyError("too_many", f"at most {MAX_BATCH} events per request, got {len(items)}")
    return items


def validate_batch(
    items: list[Any], *, now_ms: int, max_future_ms: int
) -> tuple[list[ValidatedItem], list[dict[str, Any]]]:
    """Validate every item; returns (valid items, errors). Errors name the item index."""
    valid: list[ValidatedItem] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            event = validate_event(
                item, topic_kind=None, key=None, now_ms=now_ms, max_future_ms=max_future_ms
            )
        except Rejected as rejected:
            errors.append(
                {
                    "index": index,
                    "reason": rejected.reason,
                    "detail": rejected.detail,
                    "errors": rejected.errors,
                }
            )
            continue
        # The producer's own JSON travels unchanged, as on the Kafka path.
        valid.append(ValidatedItem(event, TYPE_TOPIC_KIND[event.type], orjson.dumps(item)))
    return valid, errors


def pulse_body_to_event(account_id: str, body: Any, now_ms: int) -> dict[str, Any]:
    """The pulse event a ``POST /accounts/{id}/pulse`` body stands for.

    The body carries ``rating``, ``reason`` and optionally ``author``, ``expires_at``,
    ``event_id`` (for idempotent retries) and ``occurred_at``; the account comes
    from the path. Validation happens afterwards, like any event.
    """
    if not isinstance(body, dict):
        raise BodyError("not_object", "the body must be a JSON object")
    if "account_id" in body and body["account_id"] != account_id:
        raise BodyError("key_mismatch", "account_id in the body differs from the path")
    event: dict[str, Any] = {
        "event_id": body.get("event_id") or f"pulse-{uuid.uuid4()}",
        "account_id": account_id,
        "type": "pulse",
        "occurred_at": body.get("occurred_at", now_ms),
    }
    for name in ("rating", "reason", "author", "expires_at"):
        if name in body:
            event[name] = body[name]
    return event
