from __future__ import annotations

import logging

import pytest

from service.runtime.log_limit import (
    ClientErrorFilter,
    RepeatFilter,
    limit_http_errors,
    limit_repeats,
)


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


def _server_error(exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("10.0.0.7",),
        (type(exc), exc, None),
    )


def test_a_malformed_request_is_one_warning_line_without_the_request_text() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    record = _server_error(
        BadHttpMessage("Invalid character in Content-Length:\n\n  b'Authorization: Bearer s3'")
    )
    assert ClientErrorFilter().filter(record)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == (
        "bad HTTP request from 10.0.0.7: 400 BadHttpMessage (Invalid character in Content-Length)"
    )
    assert "s3" not in logging.Formatter().format(record)


def test_a_handler_bug_keeps_its_traceback() -> None:
    record = _server_error(ZeroDivisionError("x"))
    assert ClientErrorFilter().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_limit_http_errors_passes_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    server = logging.getLogger("aiohttp.server")
    before = list(server.filters)
    limit_http_errors(interval_s=60.0)
    try:
        with caplog.at_level(logging.INFO, logger="aiohttp.server"):
            for _ in range(300):
                try:
                    raise BadHttpMessage("Invalid character in Content-Length:")
                except BadHttpMessage as exc:
                    server.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
        lines = [r for r in caplog.records if r.name == "aiohttp.server"]
        assert len(lines) == 1 and lines[0].exc_info is None
    finally:
        server.filters[:] = before
