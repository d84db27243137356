"""``/portfolio``: every worker's accounts per bucket, gathered by whichever worker is asked."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from faust.web import Request, Response, View

from schemas.outputs import format_utc
from service.api.portfolio import AccountSummary, merge, summarise
from streams.web.common import Api, json_response

__all__ = ["install_portfolio"]


def install_portfolio(api: Api) -> None:
    app, settings = api.app, api.settings

    @app.page("/internal/portfolio")
    async def internal_portfolio(web: View, request: Request) -> Response:
        return json_response(web, local_part(api))

    @app.page("/portfolio")
    @api.guard(write=False)
    async def portfolio(web: View, request: Request) -> Response:
        """Accounts and ARR per bucket, red share against target, movers (7 days)."""
        own = settings.canonical_url.rstrip("/")
        others = {
            str(url).rstrip("/")
            for url in app.router.tables_metadata()
            if str(url).rstrip("/") != own
        }
        parts = [local_part(api)]
        unreachable: list[str] = []
        if others:
            parts.extend(await _remote_parts(sorted(others), unreachable))
        body = merge(parts, red_share_target=settings.red_share_target)
        body["workers"] = 1 + len(others)
        body["complete"] = not unreachable
        if unreachable:
            body["unreachable"] = sorted(unreachable)
        body["as_of"] = format_utc(int(time.time() * 1000))
        return json_response(web, body)


def local_part(api: Api) -> dict[str, Any]:
    """This worker's share of the portfolio (the accounts it owns)."""
    summaries = []
    known_summaries = api.processor.summaries
    states = api.accounts.states
    for key in states:
        known = known_summaries.get(key)
        if known is not None:
            summaries.append(known)
            continue
        # Not rescored since this worker took it over: read, not made live.
        state = states.peek(key)
        if state is not None and state.scored_at is not None and state.bucket is not None:
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


async def _remote_parts(urls: list[str], unreachable: list[str]) -> list[dict[str, Any]]:
    """The other workers' shares; the URLs that did not answer go to ``unreachable``."""
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

        found = await asyncio.gather(*(fetch(url) for url in urls))
    return [part for part in found if part is not None]
