"""Per-account pages: ``/accounts/{id}/state``, ``/health`` (routed to the owner) and
``/history`` (from the SQL history, on any worker)."""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson
import pydantic_core
from faust.web import Request, Response, View
from sqlalchemy.exc import SQLAlchemyError

from schemas.outputs import format_utc
from service.model.account_state import AccountState
from service.model.scoring import score_at
from streams.web.common import Api, ParamError, error, int_param, json_response, time_param

__all__ = ["HISTORY_LIMIT", "SOURCE_HEADER", "install_accounts", "state_view"]

log = logging.getLogger("vitals.web")

#: ``/history``: the most recent ``limit`` of each list; default and maximum.
HISTORY_LIMIT: Final = (500, 10_000)
#: Response header of ``/health``: ``state`` (computed from the account's
#: state) or ``history`` (the stored score at or before ``as_of``).
SOURCE_HEADER: Final = "Vitals-Score-Source"

#: What an unreachable or unmigrated history database is answered with.
_HISTORY_ERRORS: Final = (SQLAlchemyError, OSError, RuntimeError)
_UNAVAILABLE: Final = "the history database is not reachable or not migrated (vitals db upgrade)"


def install_accounts(api: Api) -> None:
    app, accounts, processor = api.app, api.accounts, api.processor

    @app.page("/accounts/{account_id}/state")
    @api.guard(write=False)
    @app.table_route(table=accounts, match_info="account_id")
    async def account_state(web: View, request: Request, account_id: str) -> Response:
        """Raw state summary (counts, snapshot, last score) of one account."""
        state: AccountState | None = accounts.get(account_id.encode())
        if state is None:
            return error(web, 404, "unknown_account", f"no events seen for {account_id!r}")
        return json_response(web, state_view(state))

    @app.page("/accounts/{account_id}/health")
    @api.guard(write=False)
    @app.table_route(table=accounts, match_info="account_id")
    async def account_health(web: View, request: Request, account_id: str) -> Response:
        """Latest score with its explanation; ``?as_of=`` explains another instant.

        From the account's last score on, the score is computed from its
        state; an earlier instant is answered with the newest stored score at
        or before it (``Vitals-Score-Source: history``), or 400 naming what
        can be asked when the history holds none.
        """
        state: AccountState | None = accounts.get(account_id.encode())
        if state is None or state.scored_at is None:
            return error(web, 404, "unknown_account", f"no score for {account_id!r}")
        try:
            as_of = time_param(request, "as_of")
        except ParamError as exc:
            return error(web, 400, "invalid_parameter", str(exc))
        if as_of is None or as_of >= state.scored_at:
            when = state.scored_at if as_of is None else as_of
            score = score_at(state, when, processor.scorecard)
            return _health(web, pydantic_core.to_json(score), "state")
        return await _past_health(api, web, account_id, as_of, state.scored_at)

    @app.page("/accounts/{account_id}/history")
    @api.guard(write=False)
    async def account_history(web: View, request: Request, account_id: str) -> Response:
        """Stored scores, bucket changes and triggers of one account (from SQL)."""
        from service.history import db as history_db

        try:
            since = time_param(request, "since")
            until = time_param(request, "until")
            limit = int_param(
                request, "limit", default=HISTORY_LIMIT[0], low=1, high=HISTORY_LIMIT[1]
            )
        except ParamError as exc:
            return error(web, 400, "invalid_parameter", str(exc))
        if since is not None and until is not None and since >= until:
            detail = "since must be earlier than until (the range is since <= t < until)"
            return error(web, 400, "invalid_parameter", detail)
        try:
            engine = api.history_engine()
            scores = await history_db.score_history(engine, account_id, since, until, limit)
            changes = await history_db.bucket_changes_for(engine, account_id, since, until, limit)
            triggers = await history_db.triggers_for(engine, account_id, since, until, limit)
        except _HISTORY_ERRORS as exc:  # the history store is optional for a worker
            log.warning("history query failed: %s", type(exc).__name__)
            return error(web, 503, "history_unavailable", _UNAVAILABLE)
        return json_response(
            web,
            {
                "account_id": account_id,
                "scores": scores,
                "bucket_changes": changes,
                "playbook_triggers": triggers,
            },
        )


#: Times of ``AccountState.summary`` (epoch ms) shown as RFC 3339 on ``/state``.
_STATE_TIMES: Final = ("first_event_at", "last_event_at", "last_activity_at", "scored_at")
_SNAPSHOT_TIMES: Final = ("customer_since", "renewal_at")


def state_view(state: AccountState) -> dict[str, Any]:
    """``/state``'s body: the state's summary with its times as RFC 3339 UTC strings."""
    view = state.summary()
    for name in _STATE_TIMES:
        if isinstance(view.get(name), int):
            view[name] = format_utc(view[name])
    snapshot = view.get("snapshot")
    if isinstance(snapshot, dict):
        for name in _SNAPSHOT_TIMES:
            if isinstance(snapshot.get(name), int):
                snapshot[name] = format_utc(snapshot[name])
    return view


def _health(web: View, body: bytes, source: str) -> Response:
    response = web.bytes(body, content_type="application/json")
    response.headers[SOURCE_HEADER] = source
    return response


async def _past_health(
    api: Api, web: View, account_id: str, as_of: int, scored_at: int
) -> Response:
    """The newest stored score at or before ``as_of`` (before the account's last score)."""
    from service.history import db as history_db

    try:
        engine = api.history_engine()
        found = await history_db.score_history(
            engine, account_id, None, as_of + 1, 1, include_payload=True
        )
        span = None if found else await history_db.score_span(engine, account_id)
    except _HISTORY_ERRORS as exc:
        log.warning("history query failed: %s", type(exc).__name__)
        return error(
            web,
            503,
            "history_unavailable",
            f"as_of before the account's last score ({format_utc(scored_at)}) is answered "
            f"from the history, and {_UNAVAILABLE}",
        )
    if found:
        payload: Any = found[0]["payload"]
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return _health(web, body, "history")
    can = f"an instant from the account's last score on ({format_utc(scored_at)})"
    if span is not None:
        can += f", or within its stored history ({format_utc(span[0])} .. {format_utc(span[1])})"
    return error(
        web,
        400,
        "as_of_out_of_range",
        f"no score of {account_id!r} at or before {format_utc(as_of)}: ask for {can}",
        scored_at=format_utc(scored_at),
        history=None
        if span is None
        else {"first": format_utc(span[0]), "last": format_utc(span[1])},
    )
