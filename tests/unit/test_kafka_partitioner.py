"""The relay's partitioner must put every key where kafka-python's default partitioner does."""

from __future__ import annotations

from uuid import uuid4

from kafka.partitioner.default import DefaultPartitioner

from crm.infra.kafka import HASH_CACHE, KeyPartitioner


class Cluster:
    """The part of kafka-python's ClusterMetadata the default partitioner reads."""

    def __init__(self, partitions: set[int]) -> None:
        self._partitions = partitions

    def topics(self) -> set[str]:
        return {"crm.customer"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self._partitions)

    available_partitions_for_topic = partitions_for_topic


class Producer:
    """The part of KafkaProducer that KeyPartitioner reads."""

    def __init__(self, partitions: set[int]) -> None:
        self._partitions = partitions

    def partitions_for(self, topic: str) -> set[int]:
        return set(self._partitions)


def test_every_key_lands_where_the_default_partitioner_puts_it() -> None:
    ours, default = KeyPartitioner(), DefaultPartitioner()
    keys = [str(uuid4()).encode() for _ in range(HASH_CACHE + 500)]  # past the cache's size: it empties
    for partitions in ({0}, {0, 1, 2}, set(range(6)), {3, 7, 1, 12}):
        cluster = Cluster(partitions)
        for round_keys in (keys[:2_000], keys, keys[:50]):  # first sight, cached, after the cache emptied
            partition = ours.for_round(Producer(partitions))
            for key in round_keys:
                assert partition("crm.customer", key) == default.partition("crm.customer", key, key, b"v", b"v",
                                                                           cluster)
