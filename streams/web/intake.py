"""``POST /events`` and ``POST /accounts/{id}/pulse``: validated like the Kafka path,
produced to the input topics, answered once Kafka acknowledged them."""

from __future__ import annotations

import asyncio
import time
from typing import Final

import orjson
from faust.web import Request, Response, View

from service.api.intake import (
    MAX_LISTED_ERRORS,
    BodyError,
    parse_events_body,
    pulse_body_to_event,
    validate_batch,
    validate_batch_async,
)
from streams.web.common import Api, error, json_response, post_view

__all__ = ["CONCURRENT_VALIDATIONS", "install_intake"]

#: Bodies validated at the same time; more wait their turn, so that many big
#: requests at once cannot crowd out the worker's other requests and timers.
CONCURRENT_VALIDATIONS: Final = 2


def install_intake(api: Api) -> None:
    app, settings = api.app, api.settings
    validating = asyncio.Semaphore(CONCURRENT_VALIDATIONS)

    @api.guard(write=True)
    async def post_events(web: View, request: Request) -> Response:
        """Validate a batch (object, array or NDJSON) exactly like the Kafka path.

        202 when every event is valid and acknowledged by Kafka; 400 listing
        the first errors (and counting the rest), with nothing produced, otherwise.
        """
        body = await api.read_body(web, request)
        if not isinstance(body, bytes):
            return body
        async with validating:
            try:
                items = parse_events_body(body, request.headers.get("Content-Type", ""))
            except BodyError as exc:
                return error(web, 400, exc.reason, exc.detail, errors=[])
            del body
            result = await validate_batch_async(
                items, now_ms=int(time.time() * 1000), max_future_ms=settings.max_future_ms
            )
        if result.invalid:
            listed = (
                ""
                if not result.unlisted
                else f" (the first {MAX_LISTED_ERRORS} are listed, {result.unlisted} more)"
            )
            return error(
                web,
                400,
                "invalid_events",
                f"{result.invalid} of {len(items)} events are invalid; nothing was accepted"
                + listed,
                errors=result.errors,
                errors_not_listed=result.unlisted,
            )
        valid = result.valid
        await api.produce(
            [(item.topic_kind, item.event.account_id.encode(), item.value) for item in valid]
        )
        return json_response(
            web, {"accepted": len(valid), "event_ids": [i.event.event_id for i in valid]}, 202
        )

    @api.guard(write=True)
    async def post_pulse(web: View, request: Request, account_id: str) -> Response:
        """A CSM's manual read of the account, onto the engagement topic."""
        body = await api.read_body(web, request)
        if not isinstance(body, bytes):
            return body
        try:
            parsed = orjson.loads(body) if body.strip() else None
            event = pulse_body_to_event(account_id, parsed, int(time.time() * 1000))
        except orjson.JSONDecodeError as exc:
            return error(web, 400, "not_json", f"the body is not valid JSON: {exc}", errors=[])
        except BodyError as exc:
            return error(web, 400, exc.reason, exc.detail, errors=[])
        result = validate_batch(
            [event], now_ms=int(time.time() * 1000), max_future_ms=settings.max_future_ms
        )
        if result.invalid:
            first = result.errors[0]
            return error(web, 400, "invalid_pulse", first["detail"], errors=first["errors"])
        await api.produce([("engagement", account_id.encode(), result.valid[0].value)])
        return json_response(web, {"accepted": 1, "event_id": event["event_id"]}, 202)

    app.page("/events")(post_view(post_events))
    app.page("/accounts/{account_id}/pulse")(post_view(post_pulse))
