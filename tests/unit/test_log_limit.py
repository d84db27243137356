from __future__ import annotations

import logging

import pytest

from service.runtime.log_limit import RepeatFilter, limit_repeats


def _record(msg: str, name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)


def test_repeats_inside_the_interval_are_dropped_and_counted() -> None:
    now = [0.0]
    limiter = RepeatFilter(10.0, clock=lambda: now[0])
    assert limiter.filter(_record("Unable connect to node with id %s"))
    for step in range(1, 6):
        now[0] = step
        assert not limiter.filter(_record("Unable connect to node with id %s"))
    # Another message is not held back by the first one.
    assert limiter.filter(_record("Unable to update metadata from %s"))
    now[0] = 10.5
    passed = _record("Unable connect to node with id %s")
    assert limiter.filter(passed)
    assert "5 similar messages" in str(passed.msg)


def test_the_same_template_from_another_logger_passes() -> None:
    limiter = RepeatFilter(10.0, clock=lambda: 0.0)
    assert limiter.filter(_record("x", "aiokafka.conn"))
    assert limiter.filter(_record("x", "aiokafka.cluster"))


def test_limit_repeats_reaches_existing_child_loggers(caplog: pytest.LogCaptureFixture) -> None:
    child = logging.getLogger("vitalstestlib.child")
    shared = limit_repeats(("vitalstestlib",), interval_s=60.0)
    try:
        with caplog.at_level(logging.ERROR, logger="vitalstestlib.child"):
            for _ in range(50):
                child.error("connection refused")
        assert [r.getMessage() for r in caplog.records] == ["connection refused"]
    finally:
        child.removeFilter(shared)
        logging.getLogger("vitalstestlib").removeFilter(shared)
