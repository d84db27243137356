"""Logging that keeps personal data out and every traceback in one record.

* :class:`PayloadRedactor` is a filter for log handlers. At DEBUG aiokafka logs
  every message it sends (``Sending (key=... value=...)``) and every request
  and response it exchanges with the brokers (``Request to ...: ProduceRequest
  (...)``, ``Response from ...: FetchResponse(...)``), record bytes included:
  user ids, pulse reasons, whole events. The filter replaces any argument that
  is raw bytes by its size and any Kafka protocol structure by its class name,
  whatever the logger and the level, so turning DEBUG on never writes
  payloads to the log.
* :func:`log_thread_exceptions` makes an exception that ends a thread one log
  record. Python's default hook prints it to ``sys.stderr``, one ``write()``
  per token; a worker whose stderr is redirected to the log (mode does that
  unless told not to) turned one traceback into some 60 records of one
  token each (``^``, ``.``, ``CancelledError``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Final

from aiokafka.protocol.struct import Struct

__all__ = ["PayloadRedactor", "log_thread_exceptions", "redact_arg"]

log = logging.getLogger("vitals.threads")

_RAW: Final = (bytes, bytearray, memoryview)


def redact_arg(value: Any) -> Any:
    """``value``, or a stand-in without its content when it can carry a payload."""
    if isinstance(value, _RAW):
        return f"<{len(value)} bytes>"
    if isinstance(value, Struct):
        return f"<{type(value).__name__}>"
    return value


class PayloadRedactor(logging.Filter):
    """Replace raw bytes and Kafka protocol structures among a record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            if any(isinstance(arg, (*_RAW, Struct)) for arg in args):
                record.args = tuple(redact_arg(arg) for arg in args)
        elif isinstance(args, dict) and any(
            isinstance(arg, (*_RAW, Struct)) for arg in args.values()
        ):
            record.args = {key: redact_arg(arg) for key, arg in args.items()}
        return True


def log_thread_exceptions() -> None:
    """Install a ``threading.excepthook`` that logs an uncaught exception as one record.

    A cancelled thread (the Kafka consumer's, when the worker stops) is one
    INFO line without a traceback; anything else is one ERROR record with it.
    """

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        if args.exc_type is not None and issubclass(args.exc_type, asyncio.CancelledError):
            log.info("thread %s was cancelled", name)
            return
        log.error(
            "thread %s stopped by an exception",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )

    threading.excepthook = hook
