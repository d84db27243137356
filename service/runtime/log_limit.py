"""Rate-limit repeated log lines of chatty libraries.

Why: while the broker is unreachable, aiokafka logs every failed connection
and metadata attempt at ERROR, about every 100 ms per client: a 30 s outage
wrote 18 MB (2,300 lines/s) to a worker's log (docs/reliability.md). The
first occurrence of a message is always logged; repeats of the same logger
and message template within ``interval_s`` are counted and dropped, and the
next one that passes says how many were dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

__all__ = ["RepeatFilter", "limit_repeats"]


class RepeatFilter(logging.Filter):
    """Pass one record per (logger, message template) per ``interval_s``."""

    def __init__(
        self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        #: (logger name, template) -> (time last passed, repeats dropped since).
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self.seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self.seen[key] = (last[0], last[1] + 1)
            return False
        dropped = 0 if last is None else last[1]
        self.seen[key] = (now, 0)
        if dropped:
            shown = f"{dropped} similar messages in the last {self.interval_s:g} s not shown"
            record.msg = f"{record.msg} ({shown})"
        return True


def limit_repeats(
    prefixes: Iterable[str] = ("aiokafka",), interval_s: float = 10.0
) -> RepeatFilter:
    """Attach one ``RepeatFilter`` to every existing logger under ``prefixes``.

    A logger's filters do not apply to its children, so each module logger
    that exists (call this after the libraries are imported) gets it.
    """
    shared = RepeatFilter(interval_s)
    wanted = tuple(prefixes)
    names = [
        name
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
        and any(name == p or name.startswith(p + ".") for p in wanted)
    ]
    for name in [*wanted, *names]:
        logging.getLogger(name).addFilter(shared)
    return shared
