"""Assemble a complete worker app: topology, agents, timers and web pages."""

from __future__ import annotations

import faust

from service.settings import Settings
from streams.app import Topology, build_topology
from streams.ingest import install_ingest
from streams.web import install_web


def build_worker(settings: Settings) -> Topology:
    """Everything a worker runs, wired from one settings object."""
    top = build_topology(settings)
    install_ingest(top)
    install_web(top)

    @top.app.task  # type: ignore[untyped-decorator]
    async def declare_output_topics() -> None:
        # Input topics are declared by the consumer on subscribe; outputs are
        # declared up front so downstream consumers can subscribe before the
        # first record is written.
        for topic in (top.dlq, top.scores, top.bucket_changes, top.triggers):
            await topic.maybe_declare()

    return top


def build_worker_app(settings: Settings) -> faust.App:
    return build_worker(settings).app
