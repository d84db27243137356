"""Per-account pages: ``/accounts/{id}/state``, ``/health`` (routed to the owner) and
``/history`` (from the SQL history, on any worker)."""

from __future__ import annotations

import logging

import pydantic_core
from faust.web import Request, Response, View

from service.model.account_state import AccountState
from service.model.scoring import score_at
from streams.web.common import Api, error, json_response, time_param

__all__ = ["install_accounts"]

log = logging.getLogger("vitals.web")


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
        return json_response(web, state.summary())

    @app.page("/accounts/{account_id}/health")
    @api.guard(write=False)
    @app.table_route(table=accounts, match_info="account_id")
    async def account_health(web: View, request: Request, account_id: str) -> Response:
        """Latest score with its explanation; ``?as_of=`` explains another instant."""
        state: AccountState | None = accounts.get(account_id.encode())
        if state is None or state.scored_at is None:
            return error(web, 404, "unknown_account", f"no score for {account_id!r}")
        try:
            as_of = time_param(request, "as_of") or state.scored_at
        except (TypeError, ValueError) as exc:
            return error(web, 400, "invalid_parameter", f"as_of: {exc}")
        score = score_at(state, max(as_of, state.scored_at), processor.scorecard)
        return web.bytes(pydantic_core.to_json(score), content_type="application/json")

    @app.page("/accounts/{account_id}/history")
    @api.guard(write=False)
    async def account_history(web: View, request: Request, account_id: str) -> Response:
        """Stored scores, bucket changes and triggers of one account (from SQL)."""
        from service.history import db as history_db

        try:
            since = time_param(request, "since")
            until = time_param(request, "until")
            limit = min(int(request.query.get("limit", "500")), 10_000)
        except (TypeError, ValueError) as exc:
            return error(web, 400, "invalid_parameter", str(exc))
        try:
            engine = api.history_engine()
            scores = await history_db.score_history(engine, account_id, since, until, limit)
            changes = await history_db.bucket_changes_for(engine, account_id, since, until)
            triggers = await history_db.triggers_for(engine, account_id, since, until)
        except Exception as exc:  # the history store is optional for a worker
            log.warning("history query failed: %s", exc)
            return error(
                web,
                503,
                "history_unavailable",
                "the history database is not reachable or not migrated (vitals db upgrade)",
            )
        return json_response(
            web,
            {
                "account_id": account_id,
                "scores": scores,
                "bucket_changes": changes,
                "playbook_triggers": triggers,
            },
        )
