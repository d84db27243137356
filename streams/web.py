"""HTTP API served by every worker (faust's aiohttp web server).

Any worker answers for any account: ``/accounts/{id}/health`` is routed to the
worker owning the account's partition (faust ``table_route``); ``/portfolio``
gathers every worker's part. Handlers are thin: validation lives in
``service.api.intake``, aggregation in ``service.api.portfolio``, history queries in
``service.history.db``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pydantic_core
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from schemas.events import parse_timestamp
from service.api.intake import BodyError, parse_events_body, pulse_body_to_event, validate_batch
from service.api.openapi import openapi_document
from service.api.portfolio import AccountSummary, merge, summarise
from service.model.account_state import AccountState
from service.model.scoring import score_at
from service.runtime import metrics
from streams.app import Topology
from streams.processor import Processor

log = logging.getLogger("vitals.web")

Handler = Callable[..., Awaitable[Response]]


def _error(web: View, status: int, reason: str, detail: str, **extra: Any) -> Response:
    return web.json({"error": reason, "detail": detail, **extra}, status=status)


def _json(web: View, body: Any, status: int = 200) -> Response:
    return web.bytes(orjson.dumps(body), content_type="application/json", status=status)


def _time_param(request: Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    return parse_timestamp(int(raw) if raw.isdigit() else raw)


def install_web(top: Topology, processor: Processor) -> None:
    """Register the worker's HTTP pages on the faust web server."""
    app = top.app
    settings = top.settings
    accounts = top.accounts
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None
    history: dict[str, Any] = {}

    def authorised(request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        if token is None or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer ") :].encode(), token)

    def guard(*, write: bool) -> Callable[[Handler], Handler]:
        """Token check (POST always, GET if configured) before the handler runs."""

        def decorate(handler: Handler) -> Handler:
            async def wrapped(web: View, request: Request, *args: Any, **kwargs: Any) -> Response:
                if (write or settings.api_read_token_required) and not authorised(request):
                    detail = (
                        "send 'Authorization: Bearer <VITALS_API_TOKEN>'"
                        if token is not None
                        else "POST endpoints are disabled until VITALS_API_TOKEN is set"
                    )
                    return _error(web, 401, "unauthorized", detail)
                return await handler(web, request, *args, **kwargs)

            wrapped.__name__ = handler.__name__
            wrapped.__doc__ = handler.__doc__
            return wrapped

        return decorate

    async def read_body(web: View, faust_request: Request) -> bytes | Response:
        request: Any = faust_request  # aiohttp's request underneath
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            return _error(
                web, 413, "too_large", f"the body exceeds {settings.max_body_bytes} bytes"
            )
        body = bytearray()
        async for chunk in request.content.iter_chunked(65_536):
            body += chunk
            if len(body) > settings.max_body_bytes:
                return _error(
                    web, 413, "too_large", f"the body exceeds {settings.max_body_bytes} bytes"
                )
        return bytes(body)

    async def produce(items: list[tuple[str, bytes, bytes]]) -> None:
        """Send (topic kind, key, value) and wait until Kafka acknowledged each."""
        pending = []
        for kind, key, value in items:
            topic = app.topic(
                settings.input_topic(kind), key_serializer="raw", value_serializer="raw"
            )
            pending.append(await topic.send(key=key, value=value))
        await asyncio.gather(*pending)

    # ----------------------------------------------------------- operations

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Response:
        metrics.ACCOUNTS_TRACKED.set(len(accounts))
        # aiohttp refuses a charset inside content_type; the exposition format's
        # version parameter is what Prometheus negotiates on.
        return web.bytes(
            generate_latest(metrics.REGISTRY), content_type="text/plain; version=0.0.4"
        )

    @app.page("/healthz")
    async def healthz(web: View, request: Request) -> Response:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: View, request: Request) -> Response:
        # Ready = this worker owns partitions, is not rebalancing, and its
        # tables have been recovered from their changelogs.
        assignment = app.consumer.assignment() if app.consumer else set()
        owned = sorted(tp.partition for tp in assignment if tp.topic == settings.ticks_topic)
        recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        ready = bool(assignment) and not app.rebalancing and recovered
        body = {
            "ready": ready,
            "assigned_partitions": len(assignment),
            "account_partitions": owned,
            "recovered": recovered,
        }
        return web.json(body, status=200 if ready else 503)

    @app.page("/openapi.json")
    async def openapi(web: View, request: Request) -> Response:
        return _json(web, openapi_document())

    # ----------------------------------------------------------- accounts

    @app.page("/accounts/{account_id}/state")
    @guard(write=False)
    @app.table_route(table=accounts, match_info="account_id")
    async def account_state(web: View, request: Request, account_id: str) -> Response:
        """Raw state summary (counts, snapshot, last score) of one account."""
        state: AccountState | None = accounts.get(account_id.encode())
        if state is None:
            return _error(web, 404, "unknown_account", f"no events seen for {account_id!r}")
        return _json(web, state.summary())

    @app.page("/accounts/{account_id}/health")
    @guard(write=False)
    @app.table_route(table=accounts, match_info="account_id")
    async def account_health(web: View, request: Request, account_id: str) -> Response:
        """Latest score with its explanation; ``?as_of=`` explains another instant."""
        state: AccountState | None = accounts.get(account_id.encode())
        if state is None or state.scored_at is None:
            return _error(web, 404, "unknown_account", f"no score for {account_id!r}")
        try:
            as_of = _time_param(request, "as_of") or state.scored_at
        except (TypeError, ValueError) as exc:
            return _error(web, 400, "invalid_parameter", f"as_of: {exc}")
        score = score_at(state, max(as_of, state.scored_at), processor.scorecard)
        return web.bytes(pydantic_core.to_json(score), content_type="application/json")

    @app.page("/accounts/{account_id}/history")
    @guard(write=False)
    async def account_history(web: View, request: Request, account_id: str) -> Response:
        """Stored scores, bucket changes and triggers of one account (from SQL)."""
        from service.history import db as history_db

        try:
            since = _time_param(request, "since")
            until = _time_param(request, "until")
            limit = min(int(request.query.get("limit", "500")), 10_000)
        except (TypeError, ValueError) as exc:
            return _error(web, 400, "invalid_parameter", str(exc))
        try:
            engine = history.get("engine")
            if engine is None:
                engine = history["engine"] = history_db.create_engine(settings.database_url)
            scores = await history_db.score_history(engine, account_id, since, until, limit)
            changes = await history_db.bucket_changes_for(engine, account_id, since, until)
            triggers = await history_db.triggers_for(engine, account_id, since, until)
        except Exception as exc:  # the history store is optional for a worker
            log.warning("history query failed: %s", exc)
            return _error(
                web,
                503,
                "history_unavailable",
                "the history database is not reachable or not migrated (vitals db upgrade)",
            )
        return _json(
            web,
            {
                "account_id": account_id,
                "scores": scores,
                "bucket_changes": changes,
                "playbook_triggers": triggers,
            },
        )

    # ----------------------------------------------------------- portfolio

    def local_part() -> dict[str, Any]:
        summaries = []
        for key, state in list(accounts.items()):
            known = processor.summaries.get(key)
            if known is not None:
                summaries.append(known)
            elif state.scored_at is not None and state.bucket is not None:
                arr = state.snapshot.get("arr")
                summaries.append(
                    AccountSummary(
                        state.account_id,
                        state.bucket,
                        float(state.score or 0.0),
                        None,
                        float(arr[0]) if arr else None,
                    )
                )
        return summarise(summaries)

    @app.page("/internal/portfolio")
    async def internal_portfolio(web: View, request: Request) -> Response:
        return _json(web, local_part())

    @app.page("/portfolio")
    @guard(write=False)
    async def portfolio(web: View, request: Request) -> Response:
        """Accounts and ARR per bucket, red share against target, movers (7 days)."""
        own = settings.canonical_url.rstrip("/")
        others = {
            str(url).rstrip("/")
            for url in app.router.tables_metadata()
            if str(url).rstrip("/") != own
        }
        parts = [local_part()]
        unreachable: list[str] = []
        if others:
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as session:

                async def fetch(url: str) -> dict[str, Any] | None:
                    try:
                        async with session.get(f"{url}/internal/portfolio") as response:
                            response.raise_for_status()
                            return dict(await response.json())
                    except (aiohttp.ClientError, TimeoutError):
                        unreachable.append(url)
                        return None

                for part in await asyncio.gather(*(fetch(url) for url in sorted(others))):
                    if part is not None:
                        parts.append(part)
        body = merge(parts, red_share_target=settings.red_share_target)
        body["workers"] = 1 + len(others)
        body["complete"] = not unreachable
        if unreachable:
            body["unreachable"] = sorted(unreachable)
        body["as_of"] = int(time.time() * 1000)
        return _json(web, body)

    # ----------------------------------------------------------- intake

    @guard(write=True)
    async def post_events(web: View, request: Request) -> Response:
        """Validate a batch (object, array or NDJSON) exactly like the Kafka path.

        202 when every event is valid and acknowledged by Kafka; 400 listing
        every error, with nothing produced, otherwise.
        """
        body = await read_body(web, request)
        if not isinstance(body, bytes):
            return body
        try:
            items = parse_events_body(body, request.headers.get("Content-Type", ""))
        except BodyError as exc:
            return _error(web, 400, exc.reason, exc.detail, errors=[])
        valid, errors = validate_batch(
            items, now_ms=int(time.time() * 1000), max_future_ms=settings.max_future_ms
        )
        if errors:
            return _error(
                web,
                400,
                "invalid_events",
                f"{len(errors)} of {len(items)} events are invalid; nothing was accepted",
                errors=errors,
            )
        await produce(
            [(item.topic_kind, item.event.account_id.encode(), item.value) for item in valid]
        )
        return _json(
            web, {"accepted": len(valid), "event_ids": [i.event.event_id for i in valid]}, 202
        )

    @guard(write=True)
    async def post_pulse(web: View, request: Request, account_id: str) -> Response:
        """A CSM's manual read of the account, onto the engagement topic."""
        body = await read_body(web, request)
        if not isinstance(body, bytes):
            return body
        try:
            parsed = orjson.loads(body) if body.strip() else None
            event = pulse_body_to_event(account_id, parsed, int(time.time() * 1000))
        except orjson.JSONDecodeError as exc:
            return _error(web, 400, "not_json", f"the body is not valid JSON: {exc}", errors=[])
        except BodyError as exc:
            return _error(web, 400, exc.reason, exc.detail, errors=[])
        valid, errors = validate_batch(
            [event], now_ms=int(time.time() * 1000), max_future_ms=settings.max_future_ms
        )
        if errors:
            return _error(
                web, 400, "invalid_pulse", errors[0]["detail"], errors=errors[0]["errors"]
            )
        await produce([("engagement", account_id.encode(), valid[0].value)])
        return _json(web, {"accepted": 1, "event_id": event["event_id"]}, 202)

    # faust turns a handler function into a GET view; POST needs a View class.
    app.page("/events")(_post_view(post_events))
    app.page("/accounts/{account_id}/pulse")(_post_view(post_pulse))


def _post_view(handler: Handler) -> type[View]:
    return type(handler.__name__, (View,), {"post": handler, "__doc__": handler.__doc__})
