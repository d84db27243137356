"""Rate-limit repeated log lines of chatty libraries.

Why: while the broker is unreachable, aiokafka logs every failed connection
and metadata attempt at ERROR, about every 100 ms per client: a 30 s outage
wrote 18 MB (2,300 lines/s) to a worker's log (docs/reliability.md). The
first occurrence of a message is always logged; repeats of the same logger
and message template within ``interval_s`` are counted and dropped, and the
next one that passes says how many were dropped.

The same holds for the worker's HTTP server: aiohttp logs every malformed
request (``Content-Length: -1``, a broken request line...) at ERROR with an
11-line traceback, so 300 such requests wrote 3,300 lines in 0.3 s, from
anyone who can reach the port, token or not. :func:`limit_http_errors` makes
a client's malformed request one WARNING line (no traceback: it is not our
bug; no request text: it may hold a token), and limits those lines, like any
other server error, to one per template per interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["ClientErrorFilter", "RepeatFilter", "limit_http_errors", "limit_repeats"]


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


class ClientErrorFilter(logging.Filter):
    """Turn aiohttp's log record of a malformed request into one WARNING line.

    A record whose exception is an ``HttpProcessingError`` (the request could
    not be parsed: the client's fault) loses its traceback and keeps only
    the error's first line, e.g. ``bad HTTP request from 10.0.0.7: 400
    BadHttpMessage (Invalid character in Content-Length)``. Other records
    (a handler's bug) pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            first = (exc.message or "").strip().splitlines()
            what = first[0].rstrip(":") if first else ""
            record.msg = "bad HTTP request from %s: %s %s (%s)"
            record.args = (remote, exc.code, type(exc).__name__, what)
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


def limit_http_errors(interval_s: float = 10.0) -> RepeatFilter:
    """Filter the aiohttp server's error log: client errors made one line, then
    at most one record per message template per ``interval_s``."""
    server = logging.getLogger("aiohttp.server")
    server.addFilter(ClientErrorFilter())
    limiter = RepeatFilter(interval_s)
    server.addFilter(limiter)
    return limiter
