from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from service.processing.partitioning import account_partition


@pytest.mark.parametrize("partitions", [1, 3, 4, 8, 12])
def test_matches_the_java_compatible_default_partitioner(partitions: int) -> None:
    every = list(range(partitions))
    for i in range(500):
        key = f"acct-{i:05d}".encode()
        assert account_partition(key, partitions) == DefaultPartitioner()(key, every, every)
