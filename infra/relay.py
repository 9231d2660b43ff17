"""The relay: every stored event to Kafka, in log order, at least once, surviving broker outages.

It follows the notification log with a position kept by the library's tracking recorder. Each
round publishes the next batch (up to 2,000 events), waits until the broker acknowledged every
message of it (acks=all, idempotent producer), and only then advances the position, so nothing
is skipped. After a failure the producer is replaced and the batch is sent again from the
tracked position: duplicates carry the same CloudEvent `id`, and within a producer session the
order per key holds.

Sharding (`CRM_RELAY_SHARDS`): one relay process uses one core, most of it in kafka-python's `send`.
With N shards, shard i publishes only the events of the aggregates whose id's last byte is i mod N
(selected by PostgreSQL), with a position of its own. An aggregate's events all go through one
shard, in log order, so the order per key holds as before; the shards share nothing but the log and
the tracking table. The position of the whole relay is the lowest of its shards' positions.

One publisher per aggregate (`Lease`): before it publishes, a relay holds a PostgreSQL advisory
lock for every value of the id byte its shard owns (all 256 for a single relay), on a connection
of its own. A second relay on the same database whose aggregates overlap (a second `crm relay`,
`crm up` next to `crm relay`, two shard counts at once) cannot take them and stands by, asking
again every second; when the first stops or dies, PostgreSQL drops its locks with its session
and the standby takes over from the tracked position. So two relays can be run for failover.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence
from uuid import UUID

import psycopg
import structlog
from eventsourcing.persistence import IntegrityError, Notification, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from psycopg import sql

from crm.infra.cloudevents import plain_json, to_cloudevent
from crm.infra.event_store import CrmEventStore
from crm.infra.followers import FollowerThread, open_tracking, run_rounds
from crm.infra.gc_pause import cycle_collector_paused
from crm.infra.kafka import KeyPartitioner, ensure_topics, producer_config

log = structlog.get_logger(__name__)
APP = CrmEventStore.name
BATCH = 2_000
# A shard's next batch: uuid_send gives the id's 16 bytes, the last of which picks the shard.
SHARD_QUERY = """SELECT notification_id, originator_id, originator_version, topic, state FROM {schema}.{table}
WHERE notification_id > %s AND get_byte(uuid_send(originator_id), 15) %% %s = %s
ORDER BY notification_id LIMIT %s"""


MAX_SHARDS = 256  # a shard is chosen by one byte of the aggregate id


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the events of the aggregates whose id's last byte is index mod count."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: need 0 <= index < count <= {MAX_SHARDS}")

    @property
    def name(self) -> str:
        """Its row in the tracking table (one relay alone keeps the name it always had)."""
        return APP if self.count == 1 else f"{APP}#{self.index}/{self.count}"

    def owns(self, originator_id: UUID) -> bool:
        return originator_id.bytes[15] % self.count == self.index

    @property
    def id_bytes(self) -> list[int]:
        """The values of the id's last byte whose aggregates this shard publishes."""
        return list(range(self.index, MAX_SHARDS, self.count))


# The advisory-lock key space of relay leases (pg_try_advisory_lock(int4, int4)): "crmr" in ASCII;
# the second key is a value of the aggregate id's last byte.
LEASE_KEY = 0x63726D72
LEASE_CHECK_SECONDS = 1.0  # how often a relay that holds its lease checks that its session lives
STANDBY_WAIT_SECONDS = 1.0  # how often a relay on standby asks for its lease again


class RelayRunningError(RuntimeError):
    """Another relay holds (part of) the lease."""


class LeaseLostError(RuntimeError):
    """The lease's session is gone, and its locks with it."""


class Lease:
    """A shard's right to publish: one session-level advisory lock per id byte it owns, all or none,
    on a connection of its own. PostgreSQL releases them when the session ends, however it ends."""

    def __init__(self, database_url: str, shard: Shard) -> None:
        self.database_url, self.shard = database_url, shard
        self._conn: psycopg.Connection[Any] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()  # close() may come from another thread than the relay's
        self.closed = False

    def acquire(self) -> bool:
        """Take every lock, or none (False: another relay holds some, or the lease was closed)."""
        with self._lock:
            if self.closed:
                return False
            if self._conn is not None:
                return True
            conn = self._connect()
            try:
                (refused,) = conn.execute(
                    "SELECT count(*) FROM unnest(%s::int4[]) b WHERE NOT pg_try_advisory_lock(%s::int4, b)",
                    (self.shard.id_bytes, LEASE_KEY)).fetchone()  # type: ignore[misc]
            except BaseException:
                conn.close()
                raise
            if refused:
                conn.close()  # the locks it did take go with the session
                return False
            self._conn, self._checked = conn, time.monotonic()
            return True

    def _connect(self) -> psycopg.Connection[Any]:
        # The server notices a dead client (a crashed host, a network split) by TCP keepalive, and
        # only then frees its locks: after ~2 hours by default, 25 s here. Unix sockets ignore it.
        return psycopg.connect(self.database_url, autocommit=True, connect_timeout=5,
                               application_name=f"crm relay {self.shard.name}",
                               options="-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
                                       "-c tcp_keepalives_count=3")

    def held(self) -> bool:
        """Whether the locks are still held: the session is asked at most every LEASE_CHECK_SECONDS
        (a lost session lost its locks, and another relay may have them)."""
        with self._lock:
            if self._conn is None:
                return False
            if time.monotonic() - self._checked >= LEASE_CHECK_SECONDS:
                try:
                    self._conn.execute("SELECT 1")
                except psycopg.Error:
                    self._drop()
                    return False
                self._checked = time.monotonic()
            return True

    @contextmanager
    def cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor in the lease's own session (autocommit), for a write that may only happen while
        the locks are held: it fails with the session. LeaseLostError if the session is gone."""
        with self._lock:
            if self._conn is None:
                raise LeaseLostError(self.shard.name)
            try:
                with self._conn.cursor() as curs:
                    yield curs
            except psycopg.OperationalError as error:
                self._drop()
                raise LeaseLostError(self.shard.name) from error
            self._checked = time.monotonic()

    def release(self, *, final: bool = False) -> None:
        """Free the locks (end the session); with `final`, for good: acquire() refuses after it."""
        with self._lock:
            self.closed = self.closed or final
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except psycopg.Error:
                pass


def lease_holders(database_url: str) -> list[str]:
    """The relays holding a lease on this database: 'application name (pid N)' each."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT DISTINCT l.pid, coalesce(a.application_name, '') FROM pg_locks l "
                            "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                            "AND l.classid = %s::oid AND l.objsubid = 2 AND l.granted AND l.database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1",
                            (LEASE_KEY,)).fetchall()
    return [f"{name or 'unnamed'} (pid {pid})" for pid, name in rows]


_SHARD_NAME = re.compile(re.escape(APP) + r"#([0-9]{1,3})/([0-9]{1,3})")


def _shard_count(name: str) -> int | None:
    """The shard count a tracking row belongs to (None: not a relay's row)."""
    if name == APP:
        return 1
    found = _SHARD_NAME.fullmatch(name)
    if found is None or not int(found[1]) < int(found[2]) <= MAX_SHARDS:
        return None
    return int(found[2])


def covered(rows: Mapping[str, int], count: int) -> int | None:
    """The position up to which a relay of `count` shards published every event: the lowest of its
    shards' positions; None unless every one of its shards has recorded one."""
    names = [Shard(i, count).name for i in range(count)]
    return min(rows[n] for n in names) if all(n in rows for n in names) else None


def published_position(rows: Mapping[str, int]) -> int | None:
    """Every event up to this position is published (None where no relay ever ran): the highest
    position up to which a relay of some shard count published everything, 0 if none did yet. It
    does not depend on the shard count running now: a running count that has recorded all its
    shards is the highest such count, and one that has not is not complete yet."""
    rows = relay_rows(rows)
    if not rows:
        return None
    complete = (covered(rows, count) for count in set(map(_shard_count, rows)))
    return max((p for p in complete if p is not None), default=0)


def resume_point(rows: Mapping[str, int], shard: Shard) -> int:
    """Where a shard goes on from: its own position, or further where a relay of some shard count
    (this one or an earlier one) had published everything, so a new shard count neither skips an
    event nor publishes the whole log again. From the start where there is neither."""
    return max(relay_rows(rows).get(shard.name, 0), published_position(rows) or 0)


def relay_rows(rows: Mapping[str, int]) -> dict[str, int]:
    """The relays' rows of the tracking table (the library keeps a row of its own there too)."""
    return {name: position for name, position in rows.items() if _shard_count(name) is not None}


def tracked_positions(tracking: PostgresTrackingRecorder) -> dict[str, int]:
    """Every relay's row of the tracking table: {name: position}."""
    with tracking.datastore.transaction(commit=False) as curs:
        curs.execute(f"SELECT application_name, notification_id FROM {tracking.tracking_table_name}")
        return relay_rows({row["application_name"]: row["notification_id"] or 0 for row in curs.fetchall()})


def forget_position(tracking: PostgresTrackingRecorder) -> None:
    """Publish everything again from the start, every shard (consumers dedupe by CloudEvent id).
    The library's own row (its table's migration mark) stays."""
    with tracking.datastore.transaction(commit=True) as curs:
        curs.execute(f"DELETE FROM {tracking.tracking_table_name} WHERE application_name = %s "
                     "OR application_name LIKE %s", (APP, APP + "#%"))


def forget_positions(database_url: str) -> None:
    """forget_position, on a tracking connection of its own, holding the whole lease meanwhile:
    RelayRunningError if any relay runs (it would write its position back)."""
    lease = Lease(database_url, Shard())
    if not lease.acquire():
        raise RelayRunningError("a relay is running: " + ", ".join(lease_holders(database_url)))
    try:
        tracking = open_tracking(database_url, "relay")
        try:
            forget_position(tracking)
        finally:
            tracking.datastore.close()
    finally:
        lease.release()


@dataclass
class RelayStatus:
    position: int = 0
    broker_reachable: bool | None = None
    published: int = 0
    standby: bool = False  # another relay holds (part of) this one's lease


class Relay:
    """Publishes the event log to Kafka; run() until the stop event is set."""

    def __init__(self, store: CrmEventStore, database_url: str, bootstrap: str, *, partitions: int = 6,
                 replication: int = 1, batch_size: int = BATCH, shard: Shard = Shard()) -> None:
        self.store, self.bootstrap, self.batch_size, self.shard = store, bootstrap, batch_size, shard
        self.partitions, self.replication = partitions, replication
        self.tracking = open_tracking(database_url, "relay")
        self.status = RelayStatus(position=self.position())
        self.lease = Lease(database_url, shard)
        self._producer: Any = None
        self._partitioner = KeyPartitioner()
        self._shard_query = sql.SQL(SHARD_QUERY).format(schema=sql.Identifier(store.recorder.datastore.schema),
                                                        table=sql.Identifier(store.recorder.events_table_name))

    def position(self) -> int:
        return resume_point(tracked_positions(self.tracking), self.shard)

    def run(self, stop: threading.Event) -> None:
        run_rounds(stop, self.publish_next, name="relay.broker", on_error=self._broker_failed,
                   idle_wait=lambda: STANDBY_WAIT_SECONDS if self.status.standby else 0.02, bootstrap=self.bootstrap)
        self._drop_producer()

    def _broker_failed(self) -> None:
        self._drop_producer()
        self.status.broker_reachable = False

    def publish_next(self) -> int:
        """Publish the next batch and advance the position once every message is acknowledged (0 on
        standby: another relay holds the lease)."""
        if not self._leased():
            return 0
        producer = self._ensure_producer()
        position = self.status.position  # read from the tracking table at start, then kept by _advance
        # Read first: the select then sees every event up to it, since writers take the library's table
        # lock until they commit, so positions become visible in order (the relay never skips on that).
        head = self.store.position() if self.shard.count > 1 else 0
        notifications = self._select(position)
        if not notifications:
            self.status.broker_reachable = True
            if head > position:  # the other shards' events only: none of ours is waiting up to head
                self._advance(head)
            return 0
        futures = []
        self.store.mapper.prefetch(notifications)  # type: ignore[attr-defined]
        send, partition, upcast = producer.send, self._partitioner.for_round(producer), self._upcast
        opened = self.store.mapper.opened_json  # type: ignore[attr-defined]
        with cycle_collector_paused():
            for notification in notifications:
                topic, key, value, headers = to_cloudevent(notification, upcast, opened)
                futures.append(send(topic, key=key, value=value, headers=headers, partition=partition(topic, key)))
        producer.flush(timeout=10)
        for future in futures:
            if not future.succeeded():  # after the flush every future is done: this is the rare path
                future.get(timeout=10)  # raises if the broker did not acknowledge it
        caught_up = len(notifications) < self.batch_size  # then none of ours lies between the last and head
        self._advance(max(notifications[-1].id, head) if caught_up else notifications[-1].id)
        self.status.broker_reachable = True
        self.status.published += len(notifications)
        return len(notifications)

    def _leased(self) -> bool:
        """Hold the lease, taking it if free; on taking it, go on from the tracked position (the
        relay that held it before may have moved it)."""
        if self.lease.held():
            return True
        if self.lease.closed:  # the relay is being closed while a round still runs
            return False
        if not self.lease.acquire():
            if not self.status.standby:
                log.info("relay.standby", shard=self.shard.name, holders=lease_holders(self.lease.database_url))
                self.status.standby = True
            self._drop_producer()
            return False
        self.status.position = self.position()
        if self.status.standby:
            log.info("relay.active", shard=self.shard.name, position=self.status.position)
        self.status.standby = False
        return True

    def _select(self, position: int) -> Sequence[Notification]:
        """The next batch of this shard's events after `position`, in log order."""
        if self.shard.count == 1:
            return self.store.recorder.select_notifications(start=position + 1, limit=self.batch_size)
        with self.store.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._shard_query, (position, self.shard.count, self.shard.index, self.batch_size),
                         prepare=True)
            return [Notification(id=row["notification_id"], originator_id=row["originator_id"],
                                 originator_version=row["originator_version"], topic=row["topic"],
                                 state=bytes(row["state"])) for row in curs.fetchall()]

    def _advance(self, position: int) -> None:
        """Record the position in the lease's own session, so it is recorded only while the lease
        is held: a relay whose session is gone records nothing (another relay may have published
        this batch too, and goes on from its own position). Where the row is already further,
        another relay moved it while both published (before this one noticed its lease was gone):
        go on from there, not from a position the table no longer takes."""
        try:
            with self.lease.cursor() as curs:
                self.tracking._insert_tracking(curs, Tracking(self.shard.name, position))  # refused if not advancing
        except LeaseLostError:
            log.warning("relay.lease_lost", shard=self.shard.name, position=self.status.position)
            return
        except IntegrityError:
            self.status.position = self.position()
            log.warning("relay.position_moved", shard=self.shard.name, position=self.status.position)
            return
        self.status.position = position

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
        self.lease.release(final=True)  # first: a round still running cannot take it back
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
