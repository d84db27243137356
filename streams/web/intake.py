"""``POST /events`` and ``POST /accounts/{id}/pulse``: validated like the Kafka path,
produced to the input topics, answered once Kafka acknowledged them."""

from __future__ import annotations

import time

import orjson
from faust.web import Request, Response, View

from service.api.intake import BodyError, parse_events_body, pulse_body_to_event, validate_batch
from streams.web.common import Api, error, json_response, post_view

__all__ = ["install_intake"]


def install_intake(api: Api) -> None:
    app, settings = api.app, api.settings

    @api.guard(write=True)
    async def post_events(web: View, request: Request) -> Response:
        """Validate a batch (object, array or NDJSON) exactly like the Kafka path.

        202 when every event is valid and acknowledged by Kafka; 400 listing
        every error, with nothing produced, otherwise.
        """
        body = await api.read_body(web, request)
        if not isinstance(body, bytes):
            return body
        try:
            items = parse_events_body(body, request.headers.get("Content-Type", ""))
        except BodyError as exc:
            return error(web, 400, exc.reason, exc.detail, errors=[])
        valid, errors = validate_batch(
            items, now_ms=int(time.time() * 1000), max_future_ms=settings.max_future_ms
        )
        if errors:
            return error(
                web,
                400,
                "invalid_events",
                f"{len(errors)} of {len(items)} events are invalid; nothing was accepted",
                errors=errors,
            )
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
        valid, errors = validate_batch(
            [event], now_ms=int(time.time() * 1000), max_future_ms=settings.max_future_ms
        )
        if errors:
            return error(web, 400, "invalid_pulse", errors[0]["detail"], errors=errors[0]["errors"])
        await api.produce([("engagement", account_id.encode(), valid[0].value)])
        return json_response(web, {"accepted": 1, "event_id": event["event_id"]}, 202)

    app.page("/events")(post_view(post_events))
    app.page("/accounts/{account_id}/pulse")(post_view(post_pulse))
