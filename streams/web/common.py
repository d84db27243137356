"""What the worker's HTTP pages share: the token check, error bodies, request
bodies with a size limit, producing to the input topics, the history engine."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from faust.web import Request, Response, View

from schemas.events import parse_timestamp
from streams.app import Topology
from streams.processor import Processor

__all__ = [
    "Api",
    "Handler",
    "ParamError",
    "error",
    "int_param",
    "json_response",
    "post_view",
    "time_param",
]

Handler = Callable[..., Awaitable[Response]]

log = logging.getLogger("vitals.web")


def error(web: View, status: int, reason: str, detail: str, **extra: Any) -> Response:
    """The error body of every page: ``{"error": reason, "detail": detail, ...}``."""
    return web.json({"error": reason, "detail": detail, **extra}, status=status)


def json_response(web: View, body: Any, status: int = 200) -> Response:
    return web.bytes(orjson.dumps(body), content_type="application/json", status=status)


class ParamError(ValueError):
    """A query parameter that cannot be used; the message says what can be asked."""


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:37] + "...")


def time_param(request: Request, name: str) -> int | None:
    """Query parameter ``name`` as epoch ms (RFC 3339 or epoch ms); ``None`` if absent.

    Raises :class:`ParamError` for a value that is not a time.
    """
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_timestamp(int(raw) if raw.isdigit() else raw)
    except ValueError:
        raise ParamError(
            f"{name} must be an RFC 3339 time with an offset (e.g. 2026-11-20T00:00:00Z) "
            f"or epoch milliseconds, got {_shown(raw)}"
        ) from None


def int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    """Query parameter ``name`` as an integer in ``[low, high]``; ``default`` if absent.

    Raises :class:`ParamError` for anything else.
    """
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if re.fullmatch(r"-?[0-9]{1,12}", text) is None or not low <= int(text) <= high:
        raise ParamError(f"{name} must be an integer from {low} to {high}, got {_shown(raw)}")
    return int(text)


def post_view(handler: Handler) -> type[View]:
    """faust turns a handler function into a GET view; POST needs a View class."""
    return type(handler.__name__, (View,), {"post": handler, "__doc__": handler.__doc__})


class Api:
    """The worker's parts the pages use, and the checks they share."""

    def __init__(self, top: Topology, processor: Processor) -> None:
        self.top = top
        self.app = top.app
        self.settings = top.settings
        self.accounts = top.accounts
        self.processor = processor
        secret = self.settings.api_token
        self.token = secret.get_secret_value().encode() if secret else None
        self._history_engine: Any = None
        if self.token is None:
            log.warning(
                "VITALS_API_TOKEN is not set: POST /events and POST /accounts/{id}/pulse "
                "answer 401 until it is"
            )

    def authorised(self, request: Request) -> bool:
        """``Authorization: Bearer <token>``; the scheme is case-insensitive (RFC 9110)."""
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        if self.token is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token)

    def guard(self, *, write: bool) -> Callable[[Handler], Handler]:
        """Token check (POST always, GET if configured) before the handler runs."""
        settings = self.settings

        def decorate(handler: Handler) -> Handler:
            async def wrapped(web: View, request: Request, *args: Any, **kwargs: Any) -> Response:
                if (write or settings.api_read_token_required) and not self.authorised(request):
                    detail = (
                        "send 'Authorization: Bearer <VITALS_API_TOKEN>'"
                        if self.token is not None
                        else "POST endpoints are disabled until VITALS_API_TOKEN is set"
                    )
                    return error(web, 401, "unauthorized", detail)
                return await handler(web, request, *args, **kwargs)

            wrapped.__name__ = handler.__name__
            wrapped.__doc__ = handler.__doc__
            return wrapped

        return decorate

    async def read_body(self, web: View, faust_request: Request) -> bytes | Response:
        """The request body, or a 413 response once it exceeds the limit."""
        limit = self.settings.max_body_bytes
        request: Any = faust_request  # aiohttp's request underneath
        length = request.content_length
        if length is not None and length > limit:
            return error(web, 413, "too_large", f"the body exceeds {limit} bytes")
        body = bytearray()
        async for chunk in request.content.iter_chunked(65_536):
            body += chunk
            if len(body) > limit:
                return error(web, 413, "too_large", f"the body exceeds {limit} bytes")
        return bytes(body)

    async def produce(self, items: list[tuple[str, bytes, bytes]]) -> None:
        """Send (topic kind, key, value) and wait until Kafka acknowledged each."""
        pending = []
        for kind, key, value in items:
            topic = self.app.topic(
                self.settings.input_topic(kind), key_serializer="raw", value_serializer="raw"
            )
            pending.append(await topic.send(key=key, value=value))
        await asyncio.gather(*pending)

    def history_engine(self) -> Any:
        """The history database's engine, created on first use (the store is optional)."""
        if self._history_engine is None:
            from service.history import db as history_db

            self._history_engine = history_db.create_engine(self.settings.database_url)
        return self._history_engine
