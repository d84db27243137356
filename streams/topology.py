"""Assemble a complete worker app: topology, agents, timers and web pages."""

from __future__ import annotations

import faust

from service.model.playbooks import PlaybookSet, default_playbooks, load_playbooks
from service.model.scorecard import Scorecard, default_scorecard, load_scorecard
from service.runtime.gc_policy import GcPolicy
from service.runtime.settings import Settings
from service.runtime.webhook import dispatcher_from_settings
from streams.app import Topology, build_topology
from streams.processor import Processor, install_processor
from streams.shutdown import Shutdown
from streams.web import install_web


def worker_scorecard(settings: Settings) -> Scorecard:
    """The scorecard this worker scores with (validated; raises ScorecardError)."""
    if settings.scorecard_file is None:
        return default_scorecard()
    return load_scorecard(settings.scorecard_file)


def worker_playbooks(settings: Settings, scorecard: Scorecard) -> PlaybookSet:
    """The playbooks this worker runs, checked against the scorecard's metrics."""
    book = (
        default_playbooks()
        if settings.playbooks_file is None
        else load_playbooks(settings.playbooks_file)
    )
    book.check_metrics(scorecard)
    return book


def build_worker(
    settings: Settings, scorecard: Scorecard | None = None
) -> tuple[Topology, Processor, Shutdown]:
    """Everything a worker runs, wired from one settings object."""
    top = build_topology(settings)
    card = scorecard or worker_scorecard(settings)
    processor = install_processor(
        top, card, worker_playbooks(settings, card), dispatcher_from_settings(settings)
    )
    install_web(top, processor)
    shutdown = Shutdown(processor, settings.shutdown_grace_s)

    @top.app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def finish_work(app: faust.App, **kwargs: object) -> None:
        await shutdown.finish_work()

    return top, processor, shutdown


def build_worker_app(settings: Settings, scorecard: Scorecard | None = None) -> faust.App:
    return build_worker(settings, scorecard)[0].app


def install_gc_policy(top: Topology, settings: Settings) -> GcPolicy:
    """The worker process's garbage-collector schedule, with its timer
    (``service.runtime.gc_policy``); the caller installs it just before the
    worker runs (in-process test workers keep Python's default)."""
    policy = GcPolicy.from_settings(settings)
    if policy.enabled:

        @top.app.timer(settings.gc_freeze_interval_s)  # type: ignore[untyped-decorator]
        async def freeze_tracked_objects() -> None:
            policy.maintain()

    return policy
