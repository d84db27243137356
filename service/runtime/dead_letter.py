"""Dead-letter records: the original bytes plus headers saying where they came from and why.

Contract (DESIGN.md): a rejected message is written to ``<prefix>events.dlq``
with its original key, value and headers, plus the headers named in
``schemas.dlq``. Consumers of the DLQ read the reason from the header, never by
parsing the value (which may not be JSON at all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from schemas.dlq import (
    HEADER_DETAIL,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
)

#: Reason code for an event that decoded but broke the processing code: a bug,
#: never a reason to lose the event.
PROCESSING_ERROR = "processing_error"

_MAX_DETAIL_BYTES = 1024
_VITALS_HEADERS = frozenset(
    {HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET, HEADER_REASON, HEADER_DETAIL}
)


HeadersArg = Mapping[str, Any] | Iterable[tuple[str, Any]] | None


def _as_pairs(headers: HeadersArg) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs: list[tuple[str, bytes]] = []
    for name, value in items:
        if value is None:
            value = b""
        elif isinstance(value, str):
            value = value.encode()
        pairs.append((str(name), bytes(value)))
    return pairs


def dead_letter_headers(
    *,
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    detail: str,
    original: HeadersArg = None,
) -> list[tuple[str, bytes]]:
    """Headers of a DLQ record: the producer's own headers first, then ours.

    A producer header that reuses one of our names is dropped so a consumer
    never sees two reasons.
    """
    kept = [(k, v) for k, v in _as_pairs(original) if k not in _VITALS_HEADERS]
    detail_bytes = detail.encode("utf-8", "replace")[:_MAX_DETAIL_BYTES]
    return [
        *kept,
        (HEADER_TOPIC, topic.encode()),
        (HEADER_PARTITION, str(partition).encode()),
        (HEADER_OFFSET, str(offset).encode()),
        (HEADER_REASON, reason.encode()),
        (HEADER_DETAIL, detail_bytes),
    ]
