"""HTTP pages served by every worker: metrics, liveness and account state."""

from __future__ import annotations

from typing import Any

import orjson
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from service import metrics
from streams.app import Topology
from streams.processor import Processor


def install_web(top: Topology, processor: Processor) -> None:
    """Register the worker's HTTP pages on the faust web server."""
    app = top.app
    accounts = top.accounts

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
        assigned = len(app.consumer.assignment()) if app.consumer else 0
        recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        ready = assigned > 0 and not app.rebalancing and recovered
        body = {"ready": ready, "assigned_partitions": assigned, "recovered": recovered}
        return web.json(body, status=200 if ready else 503)

    @app.page("/accounts/{account_id}/state")
    async def account_state(web: View, request: Request, account_id: str) -> Response:
        state: Any = accounts.get(account_id.encode())
        if state is None:
            return web.json({"error": "unknown account", "account_id": account_id}, status=404)
        return web.bytes(orjson.dumps(state.summary()), content_type="application/json")
