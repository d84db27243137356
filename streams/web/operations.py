"""Pages for operators and tools: ``/metrics``, ``/healthz``, ``/readyz``, ``/openapi.json``."""

from __future__ import annotations

from collections import Counter

from faust.web import Request, Response, View
from prometheus_client import generate_latest

from service.api.openapi import openapi_document
from service.runtime import metrics
from streams.web.common import Api, json_response

__all__ = ["install_operations"]


def install_operations(api: Api) -> None:
    app, settings, accounts = api.app, api.settings, api.accounts
    #: What the decoded-states counter has been told so far.
    counted = {"decoded": 0}

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Response:
        metrics.ACCOUNTS_TRACKED.set(len(accounts))
        metrics.ACCOUNTS_LIVE.set(accounts.states.live_count)
        decoded = accounts.states.decoded
        metrics.STATES_DECODED.inc(max(0, decoded - counted["decoded"]))
        counted["decoded"] = decoded
        # Counted from the states this worker owns now (not kept up as scores
        # are published: a rebalance takes accounts away).
        # (By key from the store: a state held encoded keeps its bucket beside it.)
        states = accounts.states
        by_bucket = Counter(states.bucket(key) for key in states)
        for bucket in ("green", "yellow", "red"):
            metrics.ACCOUNTS_BY_BUCKET.labels(bucket).set(by_bucket.get(bucket, 0))
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
        return json_response(web, openapi_document())
