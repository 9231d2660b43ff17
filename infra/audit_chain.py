"""Tamper evidence: a hash chain over the stored events, computed by a follower of the log.

Writers are untouched (no second serialisation point): the chainer follows the notification
log like a projection, with its position kept by the library's tracking recorder, and writes
each event's hash, the links from customers to their orders and complaints, and a checkpoint
every `checkpoint_every` events, in the same transaction as its tracking position.

hash(n) = sha256(hash(n-1) + canonical(n)), hash(0) = 32 zero bytes, where canonical(n) is
`notification_id US originator_id US originator_version US topic US len(state) US` (UTF-8,
US = 0x1f, the id in its 8-4-4-4-12 form) followed by the stored state bytes as they are.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timezone
from typing import Any, Sequence
from uuid import UUID

import structlog
from eventsourcing.persistence import InfrastructureFactory, IntegrityError, Notification, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.utils import Environment, get_topic
from psycopg import sql
from psycopg_pool import ConnectionPool

from crm.aggregates.complaint import Complaint
from crm.aggregates.order import Order
from crm.infra.audit_schema import APP, CHAIN, CHECKPOINTS, LINKS, SCHEMA, TRACKING_ENV, create_tables, ensure_schema
from crm.infra.event_store import CrmEventStore
from crm.infra.followers import FollowerThread
from crm.infra.postgres import eventsourcing_env

log = structlog.get_logger(__name__)
GENESIS = bytes(32)
BATCH = 5_000
CHECKPOINT_EVERY = 1_000
CHECKPOINT_FORMAT = "crm-audit-checkpoint/1"
# The events that tie an order or a complaint to its customer (their state carries customer_id).
LINK_TOPICS = (get_topic(Order.Placed), get_topic(Complaint.Filed))


def canonical(notification: Notification) -> bytes:
    """The bytes an event's hash covers (see the module docstring; verify builds the same in SQL)."""
    state = notification.state
    head = f"{notification.id}\x1f{notification.originator_id}\x1f{notification.originator_version}" \
           f"\x1f{notification.topic or ''}\x1f{len(state)}\x1f"
    return head.encode() + state


def chain_hash(previous: bytes, content: bytes) -> bytes:
    return hashlib.sha256(previous + content).digest()


class ChainView(PostgresTrackingRecorder):
    """The library's tracking recorder in the audit schema, plus the chain's own tables."""

    def create_table(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            create_tables(curs)
        super().create_table()

    def append(self, rows: Sequence[tuple[int, int, bytes]], links: Sequence[tuple[UUID, UUID, int]],
               checkpoints: Sequence[tuple[int, int, bytes]], tracking: Tracking) -> None:
        """One batch: the tracking position first (refused if it does not advance), then the rows."""
        with self.datastore.transaction(commit=True) as curs:
            # Derived data: a crash loses rows and position together, and the chainer redoes them.
            curs.execute("SET LOCAL synchronous_commit = off")
            self._insert_tracking(curs, tracking)
            with curs.copy(sql.SQL("COPY {} (position, seq, hash) FROM STDIN").format(CHAIN)) as copy:
                for row in rows:
                    copy.write_row(row)
            # An aggregate has one first event, and a position is chained once: no duplicates.
            with curs.copy(sql.SQL("COPY {} (customer_id, aggregate_id, position) FROM STDIN").format(LINKS)) as copy:
                for link in links:
                    copy.write_row(link)
            if checkpoints:
                curs.executemany(sql.SQL("INSERT INTO {} (position, seq, hash) VALUES (%s, %s, %s)")
                                 .format(CHECKPOINTS), checkpoints)

    def tip(self) -> tuple[int, int, bytes]:
        """(position, seq, hash) of the last chained event; (0, 0, GENESIS) before the first."""
        position = self.max_tracking_id(APP) or 0
        if position == 0:
            return 0, 0, GENESIS
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(sql.SQL("SELECT seq, hash FROM {} WHERE position = %s").format(CHAIN), (position,))
            row = curs.fetchone()
        if row is None:
            raise RuntimeError(f"the audit chain has no row at its tracked position {position}; "
                               "run `crm audit verify` and investigate before chaining further")
        return position, row["seq"], bytes(row["hash"])


def open_chain_view(database_url: str) -> ChainView:
    env = Environment(TRACKING_ENV, {**eventsourcing_env(database_url), "AUDIT_POSTGRES_SCHEMA": SCHEMA,
                                     "POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": "2"})
    return InfrastructureFactory.construct(env=env).tracking_recorder(ChainView)


class HashChainer:
    """Follows the log and extends the hash chain; run() until the stop event is set."""

    def __init__(self, store: CrmEventStore, database_url: str, *, batch_size: int = BATCH,
                 checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self.store, self.batch_size, self.checkpoint_every = store, batch_size, checkpoint_every
        self.view = open_chain_view(database_url)
        self._tip: tuple[int, int, bytes] | None = None  # (position, seq, hash) of the last chained event

    def position(self) -> int:
        return self._last()[0]

    def _last(self) -> tuple[int, int, bytes]:
        if self._tip is None:
            self._tip = self.view.tip()
        return self._tip

    def chain_once(self) -> int:
        """Hash the next batch of events; return how many were chained (0 when caught up)."""
        position, seq, previous = self._last()
        notifications = self.store.recorder.select_notifications(start=position + 1, limit=self.batch_size)
        if not notifications:
            return 0
        rows, links, checkpoints = [], [], []
        for notification in notifications:
            previous, seq = chain_hash(previous, canonical(notification)), seq + 1
            rows.append((notification.id, seq, previous))
            if seq % self.checkpoint_every == 0:
                checkpoints.append((notification.id, seq, previous))
            if notification.topic in LINK_TOPICS and notification.originator_version == 1:
                links.append((_customer_of(notification), notification.originator_id, notification.id))
        try:
            self.view.append(rows, links, checkpoints, Tracking(APP, notifications[-1].id))
        except IntegrityError:
            # Another chainer got there first: continue from what it wrote.
            log.info("audit.chain.concurrent", position=position)
            self._tip = None
            return 0
        self._tip = (notifications[-1].id, seq, previous)
        return len(notifications)

    def catch_up(self) -> int:
        """Chain everything stored so far (tests and the CLI); return how many events it chained."""
        total = 0
        while chained := self.chain_once():
            total += chained
        return total

    def run(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                chained = self.chain_once()
            except Exception as error:  # database away, or chain cut: retry from the tracked position
                log.warning("audit.chain.failed", error=repr(error)[:300])
                self._tip = None
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if not chained:
                stop.wait(0.05)

    def close(self) -> None:
        self.view.datastore.close()


def _customer_of(notification: Notification) -> UUID:
    return UUID(json.loads(notification.state)["customer_id"]["_data_"])


class ChainerThread(FollowerThread):
    """The chainer inside `crm up`."""

    def __init__(self, chainer: HashChainer) -> None:
        super().__init__(chainer, "crm-audit-chain")
        self.chainer = chainer


def export_checkpoint(pool: ConnectionPool, position: int | None = None) -> dict[str, Any] | None:
    """The latest checkpoint (or the one at `position`) as a document an auditor keeps elsewhere."""
    ensure_schema(pool)
    query = sql.SQL("SELECT position, seq, hash, created_at FROM {} {} ORDER BY position DESC LIMIT 1").format(
        CHECKPOINTS, sql.SQL("WHERE position = %s" if position is not None else ""))
    with pool.connection() as conn:
        row = conn.execute(query, (position,) if position is not None else ()).fetchone()
    if row is None:
        return None
    return {"format": CHECKPOINT_FORMAT, "application": APP, "position": row[0], "events": row[1],
            "hash": bytes(row[2]).hex(), "created_at": row[3].astimezone(timezone.utc).isoformat(),
            "exported_at": datetime.now(timezone.utc).isoformat()}
