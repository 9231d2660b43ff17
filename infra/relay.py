"""The relay: every stored event to Kafka, in log order, at least once, surviving broker outages.

It follows the notification log with a position kept by the library's tracking recorder. Each
round publishes the next batch (up to 2,000 events), waits until the broker acknowledged every
message of it (acks=all, idempotent producer), and only then advances the position, so nothing
is skipped. After a failure the producer is replaced and the batch is sent again from the
tracked position: duplicates carry the same CloudEvent `id`, and within a producer session the
order per key holds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import structlog
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder

from crm.infra.cloudevents import plain_json, to_cloudevent
from crm.infra.event_store import CrmEventStore
from crm.infra.followers import FollowerThread, open_tracking, run_rounds
from crm.infra.gc_pause import cycle_collector_paused
from crm.infra.kafka import KeyPartitioner, ensure_topics, producer_config

log = structlog.get_logger(__name__)
APP = CrmEventStore.name
BATCH = 2_000


def forget_position(tracking: PostgresTrackingRecorder) -> None:
    """Publish everything again from the start (consumers dedupe by CloudEvent id)."""
    with tracking.datastore.transaction(commit=True) as curs:
        curs.execute(f"DELETE FROM {tracking.tracking_table_name} WHERE application_name = %s", (APP,))


@dataclass
class RelayStatus:
    position: int = 0
    broker_reachable: bool | None = None
    published: int = 0


class Relay:
    """Publishes the event log to Kafka; run() until the stop event is set."""

    def __init__(self, store: CrmEventStore, database_url: str, bootstrap: str, *, partitions: int = 6,
                 replication: int = 1, batch_size: int = BATCH) -> None:
        self.store, self.bootstrap, self.batch_size = store, bootstrap, batch_size
        self.partitions, self.replication = partitions, replication
        self.tracking = open_tracking(database_url, "relay")
        self.status = RelayStatus(position=self.position())
        self._producer: Any = None
        self._partitioner = KeyPartitioner()

    def position(self) -> int:
        return self.tracking.max_tracking_id(APP) or 0

    def run(self, stop: threading.Event) -> None:
        run_rounds(stop, self.publish_next, name="relay.broker", idle_wait=0.02, on_error=self._broker_failed,
                   bootstrap=self.bootstrap)
        self._drop_producer()

    def _broker_failed(self) -> None:
        self._drop_producer()
        self.status.broker_reachable = False

    def publish_next(self) -> int:
        """Publish the next batch and advance the position once every message is acknowledged."""
        producer = self._ensure_producer()
        position = self.position()
        notifications = self.store.recorder.select_notifications(start=position + 1, limit=self.batch_size)
        if not notifications:
            self.status.broker_reachable = True
            return 0
        futures = []
        self.store.mapper.prefetch(notifications)  # type: ignore[attr-defined]
        send, partition, upcast = producer.send, self._partitioner.for_round(producer), self._upcast
        with cycle_collector_paused():
            for notification in notifications:
                topic, key, value, headers = to_cloudevent(notification, upcast)
                futures.append(send(topic, key=key, value=value, headers=headers, partition=partition(topic, key)))
        producer.flush(timeout=10)
        for future in futures:
            if not future.succeeded():  # after the flush every future is done: this is the rare path
                future.get(timeout=10)  # raises if the broker did not acknowledge it
        self.tracking.insert_tracking(Tracking(APP, notifications[-1].id))
        self.status.position, self.status.broker_reachable = notifications[-1].id, True
        self.status.published += len(notifications)
        return len(notifications)

    def _upcast(self, notification: Any) -> dict[str, Any]:
        event = self.store.mapper.to_domain_event(notification)
        return plain_json({k: v for k, v in vars(event).items()
                           if k not in ("originator_id", "originator_version", "originator_topic")})

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            ensure_topics(self.bootstrap, self.partitions, self.replication)
            self._producer = KafkaProducer(**producer_config(self.bootstrap))
        return self._producer

    def _drop_producer(self) -> None:
        """Discard the producer; after a failure the next round starts a fresh producer session."""
        if self._producer is not None:
            discard_producer(self._producer)
            self._producer = None

    def close(self) -> None:
        self._drop_producer()
        self.tracking.datastore.close()


def discard_producer(producer: Any) -> None:
    """Close a producer even when its broker is gone.

    kafka-python's close() flushes first and, with messages still pending for a dead broker,
    raises before marking itself closed, so its __del__ raises again later. Failing that, stop
    its sender thread at once and mark it closed: those messages are sent again from the tracked
    position anyway."""
    try:
        producer.close(timeout=0.5)
    except Exception:
        try:
            producer._sender.force_close()  # private, but the only way to stop it without a flush
        except Exception:
            pass
        producer._closed = True


def lag(store: CrmEventStore, position: int) -> tuple[int, float]:
    """Events not yet published, and how long the oldest of them has waited (seconds)."""
    head = store.position()
    if head <= position:
        return 0, 0.0
    (oldest,) = store.recorder.select_notifications(start=position + 1, limit=1) or [None]
    if oldest is None:
        return head - position, 0.0
    recorded = store.mapper.to_domain_event(oldest).timestamp
    return head - position, max(0.0, (datetime.now(timezone.utc) - recorded).total_seconds())


class RelayThread(FollowerThread):
    """The relay inside `crm up`."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay, "crm-relay")
        self.relay = relay
