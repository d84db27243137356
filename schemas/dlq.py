"""Header names of a dead-letter record on ``vitals.events.dlq``.

Contract (DESIGN.md): a rejected input message is written to the DLQ with its
original key, value (the exact bytes) and headers, plus the headers below. All
header values are UTF-8 bytes; partition and offset are decimal integers;
``vitals.reason`` is one of :data:`schemas.decode.REASONS` (or a processing
error code of the service); ``vitals.detail`` is one human-readable line.
Consumers read the reason from the header, never by parsing the value (which
may not be JSON at all).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DLQ_HEADERS",
    "DLQ_TOPIC_KIND",
    "HEADER_DETAIL",
    "HEADER_OFFSET",
    "HEADER_PARTITION",
    "HEADER_REASON",
    "HEADER_TOPIC",
    "DlqHeaders",
]

#: Topic kind of the DLQ (full default name ``vitals.events.dlq``).
DLQ_TOPIC_KIND: Final = "dlq"

#: Topic the rejected message was read from, e.g. ``vitals.events.login``.
HEADER_TOPIC: Final = "vitals.source.topic"
#: Partition of the rejected message (decimal).
HEADER_PARTITION: Final = "vitals.source.partition"
#: Offset of the rejected message (decimal).
HEADER_OFFSET: Final = "vitals.source.offset"
#: Machine-readable reason code, e.g. ``invalid_field``.
HEADER_REASON: Final = "vitals.reason"
#: One human-readable line explaining the reason.
HEADER_DETAIL: Final = "vitals.detail"

#: Every header vitals adds to a DLQ record, in the order it adds them.
DLQ_HEADERS: Final[tuple[str, ...]] = (
    HEADER_TOPIC,
    HEADER_PARTITION,
    HEADER_OFFSET,
    HEADER_REASON,
    HEADER_DETAIL,
)


class DlqHeaders:
    """Namespace of the DLQ header names (same values as the module constants)."""

    SOURCE_TOPIC: Final = HEADER_TOPIC
    SOURCE_PARTITION: Final = HEADER_PARTITION
    SOURCE_OFFSET: Final = HEADER_OFFSET
    REASON: Final = HEADER_REASON
    DETAIL: Final = HEADER_DETAIL
    ALL: Final = DLQ_HEADERS
