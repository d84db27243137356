"""Which partition an account belongs to: the Java client's default partitioner.

Producers are not trusted to partition this way (librdkafka's default is
CRC32-based); the worker forwards a message found on another partition to
this one, so each account's state lives in exactly one partition.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

__all__ = ["account_partition"]


def account_partition(key: bytes, partitions: int) -> int:
    """Partition of ``key`` under Kafka's Java ``DefaultPartitioner`` (murmur2)."""
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions
