"""How a worker stops: signals, the grace period, and one line about what was left undone.

The first SIGINT or SIGTERM starts faust's ordinary stop: the consumer stops
fetching, the final commit writes changed states and commits the offsets of
what was applied, queued playbook triggers go to the webhook, the consumer
leaves its group. All of it gets ``VITALS_SHUTDOWN_GRACE_S`` seconds
(default 10) from the signal. A stop that needs the broker or the webhook
could otherwise wait for ever: with the broker gone, produce acknowledgements
never come and faust waits 60 s for its consumer thread. So a watchdog
thread (it runs even if the event loop is stuck) ends the process when the
grace period is over; a stop that a crash starts is bounded the same way. A
second SIGINT or SIGTERM ends it at once.

Whichever way the worker ends, it logs one line: ``shutdown: ...`` saying how
it stopped and what it left undone (webhook deliveries not made, output
messages Kafka has not acknowledged, buffered events not applied). Exit
status: 0 when nothing was left undone, 1 when something was, 128 + the signal
number after a second signal. Nothing is lost either way: input offsets are
committed only once the outputs are acknowledged, so a restarted worker reads
again, and publishes again, whatever was not finished; triggers not delivered
to the webhook stay on the triggers topic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

import faust

from service.runtime.log_safety import PayloadRedactor
from service.runtime.webhook import WebhookDispatcher
from streams.processor import Processor

__all__ = ["Shutdown", "Undone", "VitalsWorker"]

log = logging.getLogger("vitals.shutdown")

#: Seconds of the grace period kept for faust's own stop (consumer, producer,
#: web server) after the final commit and the webhook drain, at most.
STOP_MARGIN_S: Final = 2.0

#: Exit status of a stop that left something undone.
EXIT_UNDONE: Final = 1


@dataclass(frozen=True)
class Undone:
    """What a stopping worker has not finished."""

    #: Playbook triggers not delivered to the webhook.
    triggers: int = 0
    #: Output messages (scores, changes, triggers, DLQ, changelog) Kafka has not acknowledged.
    outputs: int = 0
    #: Valid input events read but not applied yet.
    buffered: int = 0

    def __bool__(self) -> bool:
        return bool(self.triggers or self.outputs or self.buffered)

    def describe(self, triggers_topic: str) -> str:
        """The undone parts as one clause (empty when nothing is undone)."""
        parts = []
        if self.triggers:
            parts.append(
                f"{self.triggers} playbook triggers not delivered to the webhook "
                f"(they are on {triggers_topic})"
            )
        rework = []
        if self.outputs:
            rework.append(f"{self.outputs} output messages not acknowledged by Kafka")
        if self.buffered:
            rework.append(f"{self.buffered} buffered events not applied")
        if rework:
            parts.append(" and ".join(rework) + " (their input is read again after a restart)")
        return "; ".join(parts)


class Shutdown:
    """The stop of one worker: its deadline, its bounded final work and its report.

    ``begin`` is called at the first signal; ``finish_work`` runs as faust's
    ``on_before_shutdown`` handler; ``report`` logs the one line and returns
    the exit status. Thread-safe where it needs to be: the watchdog thread
    calls ``report``, and only the first call reports.
    """

    def __init__(
        self,
        processor: Processor,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.processor = processor
        self.dispatcher: WebhookDispatcher | None = processor.dispatcher
        self.grace_s = grace_s
        self.clock = clock
        self.started: float | None = None
        #: Triggers ``WebhookDispatcher.stop`` left undelivered (None: not stopped yet).
        self.webhook_left: int | None = None
        #: Called from a thread when the grace period is over (the worker's
        #: watchdog); None: nothing happens then (tests).
        self.on_deadline: Callable[[], None] | None = None
        self._reported = threading.Lock()
        #: The exit status once reported (the report is made once).
        self.status: int | None = None

    def begin(self) -> bool:
        """Start the grace period (and the watchdog, if one is set); ``False``
        if it had already started."""
        if self.started is not None:
            return False
        self.started = self.clock()
        if self.on_deadline is not None:
            watchdog = threading.Timer(self.grace_s, self.on_deadline)
            watchdog.daemon = True  # a stop that finishes in time is not held up
            watchdog.start()
        return True

    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def remaining(self) -> float:
        """Seconds left of the grace period (the whole of it before ``begin``)."""
        return max(0.0, self.grace_s - self.elapsed())

    def undone(self) -> Undone:
        """What is unfinished right now (counts only; safe from another thread)."""
        if self.webhook_left is not None:
            triggers = self.webhook_left
        elif self.dispatcher is not None:
            triggers = self.dispatcher.undelivered
        else:
            triggers = 0
        outputs, buffered = self.processor.unfinished()
        return Undone(triggers, outputs, buffered)

    async def finish_work(self) -> None:
        """The final commit and the webhook drain, within the grace period.

        Each gets what is left of the grace period minus a margin for faust's
        own stop; what does not finish in time is reported, not waited for.
        """
        self.begin()  # a stop without a signal (e.g. a crash) is bounded too
        margin = min(STOP_MARGIN_S, self.grace_s / 4)
        budget = max(0.0, self.remaining() - margin)
        # Side by side: a commit that waits for a broker that is gone must not
        # take the webhook's time, nor the reverse.
        await asyncio.gather(self._final_commit(budget), self._stop_webhook(budget))

    async def _final_commit(self, budget: float) -> None:
        try:
            await asyncio.wait_for(self.processor.commit_now(), budget)
        except TimeoutError:
            log.warning("final commit not finished within the grace period")
        except Exception as exc:  # the records are read again after the restart
            log.warning("final commit failed: %s", exc)

    async def _stop_webhook(self, budget: float) -> None:
        if self.dispatcher is not None:
            self.webhook_left = await self.dispatcher.stop(drain_timeout=budget)

    def report(self, how: str) -> int:
        """Log the one shutdown line (once) and return the exit status.

        ``how`` says how the worker stopped, e.g. ``"stopped"``; the time since
        the signal follows it.
        """
        with self._reported:
            if self.status is not None:
                return self.status
            undone = self.undone()
            head = f"shutdown: {how}"
            if self.started is not None:
                head += f" {self.elapsed():.1f} s after the signal"
            if not undone:
                log.info("%s; nothing left undone", head)
                self.status = 0
            else:
                topic = self.processor.top.settings.triggers_topic
                log.warning("%s; left undone: %s", head, undone.describe(topic))
                self.status = EXIT_UNDONE
            return self.status


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # exiting anyway: a broken handler must not stop that
            continue


class VitalsWorker(faust.Worker):
    """faust's worker with a bounded stop (see the module docstring).

    Signals are handled with ``signal.signal`` rather than the event loop's
    handlers, so a second signal ends the process even while the loop is
    busy; the first one hands over to faust's own stop on the loop.
    """

    def __init__(self, app: faust.App, shutdown: Shutdown, **kwargs: Any) -> None:
        # mode copies stderr into the log one write() per record: a traceback
        # printed there became one record per token. Nothing of ours writes to
        # stderr directly, so the redirection buys nothing.
        kwargs.setdefault("redirect_stdouts", False)
        super().__init__(app, **kwargs)
        self.shutdown = shutdown
        # A stop that starts without a signal (a crash) is bounded the same way.
        shutdown.on_deadline = self._give_up

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: bounded stop, then immediate exit; SIGUSR1: task list.

        mode's SIGUSR1 handler logs every task's stack with its local
        variables (event payloads among them) and SIGUSR2 opens a debugger on
        a terminal a worker does not have: neither belongs in production.
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_task_dump)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """Keep payloads out of every log handler (mode has just created them)."""
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.addFilter(PayloadRedactor())

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.shutdown.begin():
            self.shutdown.report(f"second {name}, stopped at once")
            _flush_logs()
            os._exit(128 + signum)
        log.info(
            "%s received: stopping; %.0f s (VITALS_SHUTDOWN_GRACE_S) to finish, "
            "send it again to stop at once",
            name,
            self.shutdown.grace_s,
        )
        stop = self._on_sigint if signum == signal.SIGINT else self._on_sigterm
        self.loop.call_soon_threadsafe(stop)

    def _give_up(self) -> None:
        grace = self.shutdown.grace_s
        status = self.shutdown.report(f"grace period (VITALS_SHUTDOWN_GRACE_S={grace:g}) over,")
        _flush_logs()
        # A stop that reported in time but hangs on exit (a thread that will
        # not end) still exits, with the status it reported.
        os._exit(status)

    def _on_task_dump(self, signum: int, frame: FrameType | None) -> None:
        self.loop.call_soon_threadsafe(_log_tasks)

    def exit_status(self) -> int:
        """After ``execute_from_commandline``: report the stop and give its exit status.

        The watchdog keeps running: if the interpreter then hangs on a thread
        that does not end, it still ends the process at the deadline.
        """
        return self.shutdown.report("stopped")


def _log_tasks() -> None:
    """One record listing the running tasks and where each waits (no local variables)."""
    lines = []
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=1)
        where = (
            f"{frames[0].f_code.co_filename}:{frames[0].f_lineno} in {frames[0].f_code.co_name}"
            if frames
            else "not started"
        )
        lines.append(f"  {task.get_name()}: {where}")
    log.warning("%d tasks:\n%s", len(lines), "\n".join(sorted(lines)))


def run_worker(worker: VitalsWorker) -> None:
    """Run ``worker`` until it stops; exit with the status of its stop.

    A worker that crashed exits with faust's status (its reason is logged);
    one that was stopped exits with ``Shutdown.report``'s.
    """
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    sys.exit(worker.exit_status())
