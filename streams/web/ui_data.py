"""The JSON pages behind the web UI: ``/accounts`` (the account list of every
worker, filtered, sorted and paged) and ``/accounts/{id}/overview`` (routed to
the owner). Aggregation lives in ``service.api.account_list``, the overview in
``service.api.account_view``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from schemas.outputs import format_utc
from service.api.account_list import AccountQuery, QueryError, local_part, merge_parts
from service.api.account_view import account_overview
from service.api.portfolio import AccountSummary, summary_from_state
from service.model.account_state import AccountState
from streams.web.common import Api, error, json_response

__all__ = ["install_ui_data", "local_summaries"]

log = logging.getLogger("vitals.web")

#: How long the asked worker waits for each other worker's part.
REMOTE_TIMEOUT_S = 5.0


def install_ui_data(api: Api) -> None:
    app, accounts, processor, settings = api.app, api.accounts, api.processor, api.settings

    @app.page("/internal/accounts")
    @api.guard(write=False)
    async def internal_accounts(web: View, request: Request) -> Response:
        """This worker's part of ``/accounts`` (see ``service.api.account_list``)."""
        try:
            query = AccountQuery.from_params(request.query)
        except QueryError as exc:
            return error(web, 400, "invalid_parameter", str(exc))
        return json_response(web, local_part(local_summaries(api), query))

    @app.page("/accounts")
    @api.guard(write=False)
    async def account_list(web: View, request: Request) -> Response:
        """Accounts of every worker: filters, sort and page in the query string.

        ``complete`` is false, and ``unreachable`` names the workers, when a
        worker did not answer: its accounts are missing from the list and counts.
        """
        try:
            query = AccountQuery.from_params(request.query)
        except QueryError as exc:
            return error(web, 400, "invalid_parameter", str(exc))
        own = settings.canonical_url.rstrip("/")
        others = sorted({str(url).rstrip("/") for url in app.router.tables_metadata()} - {own})
        parts = [local_part(local_summaries(api), query)]
        unreachable: list[str] = []
        if others:
            headers = {}
            if "Authorization" in request.headers:
                headers["Authorization"] = request.headers["Authorization"]
            parts += await _remote_parts(others, query.to_params(), headers, unreachable)
        body = merge_parts(parts, query, red_share_target=settings.red_share_target)
        body["workers"] = 1 + len(others)
        body["complete"] = not unreachable
        if unreachable:
            body["unreachable"] = sorted(unreachable)
        # RFC 3339, like every timestamp of the outputs (issue 13 moves the
        # older pages from epoch ms to it too).
        body["as_of"] = format_utc(int(time.time() * 1000))
        return json_response(web, body)

    @app.page("/accounts/{account_id}/overview")
    @api.guard(write=False)
    async def overview(web: View, request: Request, account_id: str) -> Response:
        """Health, state, gates with reasons, pulse and metric labels of one account.

        Routed to the worker that owns the account, like ``/health``; when that
        worker does not answer, 503 ``owner_unreachable`` names it.
        """
        try:
            return await app.router.route_req(accounts.name, account_id, web.web, request)
        except SameNode:
            pass
        except ServiceUnavailable:
            return error(web, 503, "not_ready", "no worker owns this account yet (rebalancing)")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            owner = str(app.router.key_store(accounts.name, account_id)).rstrip("/")
            log.warning("worker %s did not answer for an account it owns: %s", owner, exc)
            return error(
                web,
                503,
                "owner_unreachable",
                f"the worker that owns this account ({owner}) does not answer",
                worker=owner,
            )
        state: AccountState | None = accounts.get(account_id.encode())
        if state is None or state.scored_at is None:
            return error(web, 404, "unknown_account", f"no score for {account_id!r}")
        return json_response(web, account_overview(state, processor.scorecard, state.scored_at))


def local_summaries(api: Api) -> list[AccountSummary]:
    """Every scored account this worker owns: the latest published summary, or
    (not rescored since this worker took it over) the one its state gives."""
    known = api.processor.summaries
    out: list[AccountSummary] = []
    # The table's in-memory store directly: the table's own items() goes
    # through faust's per-key access, which is slow for 10,000 accounts.
    states = api.processor.states
    for key in states:
        summary = known.get(key)
        if summary is None:
            # Not rescored since this worker took it over: read, not made live.
            state = states.peek(key)
            summary = None if state is None else summary_from_state(state)
        if summary is not None:
            out.append(summary)
    return out


async def _remote_parts(
    urls: list[str],
    params: Mapping[str, str],
    headers: Mapping[str, str],
    unreachable: list[str],
) -> list[dict[str, Any]]:
    """The other workers' parts; the URLs that did not answer go to ``unreachable``."""
    timeout = aiohttp.ClientTimeout(total=REMOTE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def fetch(url: str) -> dict[str, Any] | None:
            try:
                async with session.get(
                    f"{url}/internal/accounts", params=dict(params), headers=dict(headers)
                ) as response:
                    response.raise_for_status()
                    return dict(await response.json())
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("worker %s did not answer /internal/accounts: %s", url, exc)
                unreachable.append(url)
                return None

        found = await asyncio.gather(*(fetch(url) for url in urls))
    return [part for part in found if part is not None]
