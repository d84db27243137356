"""HTTP intake without a server: body parsing, capped error lists, validation
that returns to the event loop (service/api/intake.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from schemas import load_example
from service.api.intake import (
    MAX_LISTED_ERRORS,
    VALIDATE_CHUNK,
    BodyError,
    parse_events_body,
    validate_batch,
    validate_batch_async,
)

NOW = int(time.time() * 1000)


def login(i: int, **changes: Any) -> dict[str, Any]:
    event = dict(orjson.loads(load_example("events", "login")))
    event.update(event_id=f"e{i}", occurred_at=NOW - 60_000, **changes)
    return event


def test_ndjson_error_names_the_line() -> None:
    body = b"\n".join([orjson.dumps(login(1)), b"", b"  ", b"{broken"])
    with pytest.raises(BodyError) as info:
        parse_events_body(body, "application/x-ndjson; charset=utf-8")
    assert info.value.reason == "not_json"
    assert info.value.detail.startswith("line 4 of the NDJSON body is not valid JSON: ")


def test_ndjson_content_type_is_case_insensitive() -> None:
    body = b"\n".join(orjson.dumps(login(i)) for i in range(3))
    assert len(parse_events_body(body, "Application/X-NDJSON")) == 3


def test_errors_are_capped_and_the_rest_counted() -> None:
    items = [login(i, user_id="") for i in range(8000)]
    result = validate_batch(items, now_ms=NOW, max_future_ms=300_000)
    assert result.invalid == 8000 and result.unlisted == 8000 - MAX_LISTED_ERRORS
    assert [e["index"] for e in result.errors] == list(range(MAX_LISTED_ERRORS))
    assert result.valid == []


def test_one_invalid_item_leaves_no_valid_ones() -> None:
    result = validate_batch([login(1), login(2, user_id=""), login(3)], now_ms=NOW, max_future_ms=0)
    assert (result.invalid, len(result.errors), result.valid) == (1, 1, [])
    assert result.errors[0]["index"] == 1


async def test_async_validation_returns_to_the_loop_between_chunks() -> None:
    items = [login(i, user_id="" if i % 2 else "u") for i in range(8000)]
    turns = 0
    stop = False

    async def other_task() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    before = turns
    result = await validate_batch_async(items, now_ms=NOW, max_future_ms=0)
    stop = True
    await other
    chunks = len(items) // VALIDATE_CHUNK
    assert turns - before >= chunks - 1, "another task ran between every two chunks"
    same = validate_batch(items, now_ms=NOW, max_future_ms=0)
    assert (result.invalid, result.errors) == (same.invalid, same.errors)


def test_the_openapi_document_states_the_new_answers() -> None:
    from jsonschema import Draft202012Validator

    from service.api.openapi import openapi_document

    doc = openapi_document()
    health = doc["paths"]["/accounts/{account_id}/health"]["get"]
    assert set(health["responses"]["200"]["headers"]) == {"Vitals-Score-Source"}
    assert "history" in health["description"] and "503" in health["responses"]
    limit = doc["paths"]["/accounts/{account_id}/history"]["get"]["parameters"][-1]
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 10000, "default": 500}
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["errors"]["maxItems"] == MAX_LISTED_ERRORS
    pulse = doc["paths"]["/accounts/{account_id}/pulse"]["post"]["requestBody"]
    body = pulse["content"]["application/json"]["schema"]
    assert body["properties"]["reason"]["maxLength"] == 1000
    check = Draft202012Validator(body)
    assert check.is_valid({"rating": "red", "reason": "champion left", "author": "Dana"})
    assert not check.is_valid({"rating": "red", "reason": "a\x00b"})
