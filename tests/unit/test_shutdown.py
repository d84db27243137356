"""The worker's shutdown report and its log hygiene (streams/shutdown.py,
service/runtime/log_safety.py); the stop itself is tested on a real worker in
tests/integration/test_shutdown.py."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka.protocol.produce import ProduceRequest_v0

from service.runtime.log_safety import PayloadRedactor, log_thread_exceptions
from streams.processor import Processor
from streams.shutdown import Shutdown, Undone


@dataclass
class FakeProcessor:
    """What ``Shutdown`` reads of a processor."""

    outputs: int = 0
    buffered: int = 0
    dispatcher: Any = None
    top: Any = field(
        default_factory=lambda: SimpleNamespace(
            settings=SimpleNamespace(triggers_topic="vitals.playbooks.triggers")
        )
    )
    committed: bool = False

    def unfinished(self) -> tuple[int, int]:
        return self.outputs, self.buffered

    async def commit_now(self) -> None:
        self.committed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def shutdown(
    processor: FakeProcessor, grace_s: float = 10.0, clock: Clock | None = None
) -> Shutdown:
    return Shutdown(cast(Processor, processor), grace_s, clock or Clock())


def test_undone_says_what_is_left_in_one_clause() -> None:
    assert not Undone()
    text = Undone(triggers=4, outputs=12, buffered=300).describe("t.playbooks.triggers")
    assert text == (
        "4 playbook triggers not delivered to the webhook (they are on t.playbooks.triggers); "
        "12 output messages not acknowledged by Kafka and 300 buffered events not applied "
        "(their input is read again after a restart)"
    )
    assert Undone(outputs=1).describe("x") == (
        "1 output messages not acknowledged by Kafka (their input is read again after a restart)"
    )


def test_the_grace_period_runs_from_the_first_signal() -> None:
    clock = Clock()
    stop = shutdown(FakeProcessor(), grace_s=10, clock=clock)
    assert stop.remaining() == 10
    assert stop.begin() and not stop.begin()
    clock.now += 4
    assert stop.remaining() == 6
    clock.now += 20
    assert stop.remaining() == 0


def test_report_is_one_line_once_with_the_exit_status(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    processor = FakeProcessor(outputs=3, buffered=7)
    stop = shutdown(processor, clock=clock)
    stop.begin()
    clock.now += 10
    with caplog.at_level(logging.INFO, logger="vitals.shutdown"):
        assert stop.report("grace period over,") == 1
        assert stop.report("stopped") == 1  # reported already: same status, no second line
    lines = [r.getMessage() for r in caplog.records if r.name == "vitals.shutdown"]
    assert lines == [
        "shutdown: grace period over, 10.0 s after the signal; left undone: 3 output messages "
        "not acknowledged by Kafka and 7 buffered events not applied (their input is read "
        "again after a restart)"
    ]
    assert caplog.records[-1].levelno == logging.WARNING


def test_a_clean_stop_reports_nothing_left_and_exits_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = shutdown(FakeProcessor())
    with caplog.at_level(logging.INFO, logger="vitals.shutdown"):
        assert stop.report("stopped") == 0
    assert [r.getMessage() for r in caplog.records] == ["shutdown: stopped; nothing left undone"]


class StuckDispatcher:
    """A webhook dispatcher whose deliveries never finish."""

    def __init__(self) -> None:
        self.undelivered = 5
        self.drain: float | None = None

    async def stop(self, drain_timeout: float) -> int:
        self.drain = drain_timeout
        return self.undelivered


class StuckProcessor(FakeProcessor):
    async def commit_now(self) -> None:
        await asyncio.Event().wait()  # a broker that never acknowledges


async def test_finish_work_is_bounded_and_gives_the_webhook_its_time() -> None:
    dispatcher = StuckDispatcher()
    processor = StuckProcessor(dispatcher=dispatcher)
    stop = Shutdown(cast(Processor, processor), grace_s=1.0)
    stop.begin()
    await asyncio.wait_for(stop.finish_work(), 5.0)
    assert stop.remaining() <= 0.5  # the commit got the grace period minus the margin
    # The drain ran beside the commit, with the same budget (grace - margin).
    assert dispatcher.drain is not None and 0.6 < dispatcher.drain <= 0.75
    assert stop.undone() == Undone(triggers=5)


def test_payload_arguments_are_redacted() -> None:
    redactor = PayloadRedactor()
    record = logging.LogRecord(
        "aiokafka.producer.producer",
        logging.DEBUG,
        __file__,
        1,
        "Sending (key=%s value=%s) to %s",
        (b"acct-1", b'{"user_id": "dana@example.com"}', "tp"),
        None,
    )
    assert redactor.filter(record)
    assert record.getMessage() == "Sending (key=<6 bytes> value=<31 bytes>) to tp"
    request = ProduceRequest_v0(required_acks=1, timeout=1000, topics=[])
    record = logging.LogRecord(
        "aiokafka.conn", logging.DEBUG, __file__, 1, "Request to %s: %s", ("h", request), None
    )
    redactor.filter(record)
    assert record.getMessage() == "Request to h: <ProduceRequest_v0>"
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "%s of %d", ("text", 3), None)
    redactor.filter(plain)
    assert plain.getMessage() == "text of 3"


def test_a_thread_exception_is_one_record(caplog: pytest.LogCaptureFixture) -> None:
    previous = threading.excepthook
    log_thread_exceptions()
    try:

        def fail() -> None:
            raise ValueError("boom")

        def cancelled() -> None:
            raise asyncio.CancelledError

        with caplog.at_level(logging.INFO, logger="vitals.threads"):
            for target in (fail, cancelled):
                thread = threading.Thread(target=target, name=target.__name__)
                thread.start()
                thread.join()
    finally:
        threading.excepthook = previous
    records = [r for r in caplog.records if r.name == "vitals.threads"]
    assert [r.getMessage() for r in records] == [
        "thread fail stopped by an exception",
        "thread cancelled was cancelled",
    ]
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError
    assert records[1].exc_info is None


def test_begin_starts_the_watchdog_once() -> None:
    fired = threading.Event()
    calls: list[float] = []
    stop = Shutdown(cast(Processor, FakeProcessor()), grace_s=0.05)

    def deadline() -> None:
        calls.append(stop.elapsed())
        fired.set()

    stop.on_deadline = deadline
    assert stop.begin() and not stop.begin()
    assert fired.wait(5.0)
    assert len(calls) == 1 and calls[0] >= 0.05
