"""The one decoder for input events: Kafka consumer, HTTP ``/events`` and replay.

:func:`decode_event` takes the raw message value (bytes) and either returns a
validated, frozen :data:`~schemas.events.Event` or raises :class:`Rejected`,
whose ``reason`` is one of :data:`REASONS` and becomes the ``vitals.reason``
header of the DLQ record. No other exception escapes for any input bytes.

Checks run in this order, the first failing one decides the reason:

1. ``oversized`` -- value longer than ``max_bytes``;
2. ``empty`` -- ``None`` or zero bytes;
3. ``invalid_utf8`` / ``not_json`` -- bytes that are not UTF-8 / not JSON;
4. ``not_object`` -- JSON that is not an object;
5. ``missing_field`` / ``unknown_type`` -- ``type`` missing / not a string or
   not an event type;
6. ``wrong_topic`` -- ``type`` not allowed on the topic kind (skipped when
   ``topic_kind`` is ``None``, e.g. replay);
7. ``unsupported_schema_version`` -- integer ``schema_version`` above the
   supported one (checked before the fields: a newer version may have
   different fields);
8. ``missing_field`` / ``invalid_field`` -- field validation; ``errors`` lists
   every field error and the first one gives the reason;
9. ``key_mismatch`` -- a key is given and differs from ``account_id`` (UTF-8);
10. ``future_event`` -- ``occurred_at`` later than ``now_ms + max_future_ms``.
"""

from __future__ import annotations

from typing import Any, Final, cast

import orjson
from pydantic import ValidationError
from pydantic_core import SchemaValidator

from schemas.events import EVENT_MODELS, SUPPORTED_SCHEMA_VERSION, TOPIC_TYPES, Event

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FUTURE_MS",
    "REASONS",
    "Rejected",
    "decode_event",
    "validate_event",
]

#: Every machine-readable rejection reason (the DLQ ``vitals.reason`` header values).
REASONS: Final = (
    "oversized",
    "empty",
    "invalid_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "invalid_field",
    "unknown_type",
    "wrong_topic",
    "key_mismatch",
    "future_event",
    "unsupported_schema_version",
)
#: Largest accepted message value (1 MiB, Kafka's default ``message.max.bytes``).
DEFAULT_MAX_BYTES: Final = 1_048_576
#: How far ``occurred_at`` may lie ahead of the wall clock (5 minutes).
DEFAULT_MAX_FUTURE_MS: Final = 300_000

# Pydantic error types that mean "a required value is absent".
_MISSING_TYPES: Final = frozenset({"missing", "missing_snapshot"})
# Follow-on errors that only repeat another error (pulse expires_at default
# cannot be computed when occurred_at is invalid).
_SKIPPED_TYPES: Final = frozenset({"default_factory_not_called"})
_VALIDATORS: Final[dict[str, SchemaValidator]] = {
    name: model.__pydantic_validator__  # type: ignore[misc]
    for name, model in EVENT_MODELS.items()
}
_MAX_REPR: Final = 80


class Rejected(Exception):
    """An input message that must go to the DLQ (bad data, not broken infrastructure).

    ``reason`` is one of :data:`REASONS`; ``detail`` is one human-readable line;
    ``errors`` lists field-level errors as
    ``{"field": "seats", "reason": "invalid_field", "message": "..."}`` (``field``
    is a dotted path, ``""`` for the message as a whole); it is empty for
    byte-level reasons (oversized, empty, invalid_utf8, not_json, not_object).
    """

    reason: str
    detail: str
    errors: list[dict[str, str]]

    def __init__(self, reason: str, detail: str, errors: list[dict[str, str]] | None = None):
        super().__init__(reason, detail, errors)
        self.reason = reason
        self.detail = detail
        self.errors = errors if errors is not None else []

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _short(value: object) -> str:
    text = repr(value)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


def _one(reason: str, field: str, message: str) -> Rejected:
    return Rejected(reason, message, [{"field": field, "reason": reason, "message": message}])


def _from_validation_error(exc: ValidationError) -> Rejected:
    errors: list[dict[str, str]] = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        if err["type"] in _SKIPPED_TYPES:
            continue
        reason = "missing_field" if err["type"] in _MISSING_TYPES else "invalid_field"
        field = ".".join(str(part) for part in err["loc"])
        message = " ".join(err["msg"].split())
        errors.append({"field": field, "reason": reason, "message": message})
    if not errors:  # pragma: no cover - pydantic always reports at least one error
        errors.append({"field": "", "reason": "invalid_field", "message": str(exc)})
    first = errors[0]
    detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    if len(errors) > 1:
        detail += f" (+{len(errors) - 1} more)"
    return Rejected(first["reason"], detail, errors)


def validate_event(
    obj: object,
    *,
    topic_kind: str | None,
    key: bytes | None,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Event:
    """Validate already-parsed JSON (e.g. an HTTP ``/events`` body) into an event.

    ``topic_kind`` is the topic name without ``vitals.events.`` (``None``: no
    topic check); ``key`` the message key (``None``: no key check); ``now_ms``
    the wall clock in epoch ms. Raises :class:`Rejected` (checks 4-10 of the
    module docstring).
    """
    if not isinstance(obj, dict):
        raise Rejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
    event_type = obj.get("type")
    validator = _VALIDATORS.get(event_type) if isinstance(event_type, str) else None
    if validator is None:
        if "type" not in obj:
            raise _one("missing_field", "type", "type is missing")
        raise _one("unknown_type", "type", f"unknown event type {_short(event_type)}")
    if topic_kind is not None:
        allowed = TOPIC_TYPES.get(topic_kind)
        if allowed is None:
            raise _one("wrong_topic", "type", f"unknown topic kind {_short(topic_kind)}")
        if event_type not in allowed:
            raise _one(
                "wrong_topic",
                "type",
                f"type {event_type!r} does not belong on topic {topic_kind!r}",
            )
    version = obj.get("schema_version")
    if type(version) is int and version > SUPPORTED_SCHEMA_VERSION:
        raise _one(
            "unsupported_schema_version",
            "schema_version",
            f"schema_version {version} is not supported (max {SUPPORTED_SCHEMA_VERSION})",
        )
    try:
        event = cast(Event, validator.validate_python(obj))
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    if key is not None and key != event.account_id.encode():
        raise _one(
            "key_mismatch",
            "account_id",
            f"message key {_short(key)} differs from account_id {_short(event.account_id)}",
        )
    if event.occurred_at > now_ms + max_future_ms:
        raise _one(
            "future_event",
            "occurred_at",
            f"occurred_at is {event.occurred_at - now_ms} ms in the future "
            f"(max {max_future_ms} ms)",
        )
    return event


def decode_event(
    value: bytes | None,
    *,
    topic_kind: str | None,
    key: bytes | None,
    now_ms: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Event:
    """Decode one raw message value into an event, or raise :class:`Rejected`.

    See the module docstring for the order of checks. ``value`` is never
    modified; the caller keeps the original bytes for the DLQ record.
    """
    if value is not None and len(value) > max_bytes:
        raise Rejected("oversized", f"value is {len(value)} bytes (max {max_bytes})")
    if not value:
        raise Rejected("empty", "value is empty")
    try:
        obj: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson rejects invalid UTF-8 itself; only pay for a decode on failure.
        if not isinstance(value, str):  # tolerate text from non-Kafka callers
            try:
                str(value, "utf-8")
            except UnicodeDecodeError as uexc:
                raise Rejected(
                    "invalid_utf8", f"value is not valid UTF-8 at byte {uexc.start}"
                ) from None
        raise Rejected("not_json", f"value is not JSON: {' '.join(str(exc).split())}") from None
    return validate_event(
        obj, topic_kind=topic_kind, key=key, now_ms=now_ms, max_future_ms=max_future_ms
    )
