"""Assemble a complete worker app: topology, agents, timers and web pages."""

from __future__ import annotations

import faust

from service.scorecard import Scorecard, default_scorecard, load_scorecard
from service.settings import Settings
from streams.app import Topology, build_topology
from streams.processor import Processor, install_processor
from streams.web import install_web


def worker_scorecard(settings: Settings) -> Scorecard:
    """The scorecard this worker scores with (validated; raises ScorecardError)."""
    if settings.scorecard_file is None:
        return default_scorecard()
    return load_scorecard(settings.scorecard_file)


def build_worker(
    settings: Settings, scorecard: Scorecard | None = None
) -> tuple[Topology, Processor]:
    """Everything a worker runs, wired from one settings object."""
    top = build_topology(settings)
    processor = install_processor(top, scorecard or worker_scorecard(settings))
    install_web(top, processor)
    return top, processor


def build_worker_app(settings: Settings, scorecard: Scorecard | None = None) -> faust.App:
    return build_worker(settings, scorecard)[0].app
