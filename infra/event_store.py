"""The one eventsourcing application whose notification log orders every crm event."""

from __future__ import annotations

import struct
import time
from datetime import date
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import structlog
from eventsourcing.application import Application, ProcessingEvent, Repository, project_aggregate
from eventsourcing.persistence import (IntegrityError, JSONTranscoder, Mapper, PersistenceError, StoredEvent,
                                       Transcoding)
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic
from psycopg import Cursor, errors, sql
from psycopg.rows import DictRow

from crm.aggregates.customer import Customer
from crm.infra.personal_data import INSERT_NEW_KEYS, KeyStore, PersonalDataMapper, WithNewKey
from crm.infra.postgres import eventsourcing_env

log = structlog.get_logger(__name__)


class DateAsISO(Transcoding):
    """Calendar dates (birthdays, due dates) in events, as ISO strings."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class CrmRecorder(PostgresApplicationRecorder):
    """The library's recorder, with two changes.

    New customers' personal-data keys (`WithNewKey`) are stored in the transaction of their
    events, through the hook the library runs first in that transaction (`_insert_events`,
    pipelined with the inserts). Before, each new customer's key took a statement of its own
    ahead of the event: 11 % of the API's GIL samples under command load (py-spy, BENCHMARKS.md).

    The events go in as four arrays of plain types (`unnest(uuid[], int8[], text[], bytea[])`,
    sent in binary), not as one array of the library's composite type, which psycopg writes out
    as text in Python, row by row; and the statements are rendered to strings once. The library
    keeps them as psycopg `Composed` objects, rendered anew on every execute. The same lock
    statements, the same NOTIFY, the same rows in the same order, the ids returned as the
    library's (`_fetch_ids_after_insert_events`)."""

    keys: KeyStore | None = None  # set by CrmEventStore: keys committed here are cached there

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.datastore.enable_db_functions:  # that path skips _insert_events, and so the keys
            raise ValueError("crm's recorder does not support POSTGRES_ENABLE_DB_FUNCTIONS")
        self.lock_table_statements = [sql.SQL(s.as_string(None)) for s in self.lock_table_statements]
        self._notify = sql.SQL("NOTIFY {}").format(sql.Identifier(self.channel_name)).as_string(None)
        id_type = "uuid" if self.datastore.originator_id_type == "uuid" else "text"
        self._insert_rows = sql.SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state) SELECT * FROM "
            "unnest(%b::{}[], %b::int8[], %b::text[], %b::bytea[]) RETURNING notification_id"
        ).format(sql.Identifier(self.datastore.schema or "public"), sql.Identifier(self.events_table_name),
                 sql.SQL(id_type)).as_string(None)

    def _notify_channel(self, curs: Cursor[DictRow]) -> None:
        curs.execute(self._notify)

    def _insert_stored_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any) -> None:
        """The library's (lock, notify, insert), the rows as arrays of plain types."""
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(self._insert_rows, ([e.originator_id for e in stored_events],
                                         [e.originator_version for e in stored_events],
                                         [e.topic for e in stored_events], [e.state for e in stored_events]))

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        made = _new_keys(stored_events)
        try:
            ids = super().insert_events(stored_events, **kwargs)
        except BaseException:
            if made and self.keys is not None:
                self.keys.settle(made, committed=False)
            raise
        if made and self.keys is not None:
            self.keys.settle(made, committed=True)
        return ids

    def _insert_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        made = _new_keys(stored_events)
        if made:
            curs.execute(INSERT_NEW_KEYS, ([e.originator_id for e in made], [e.new_key for e in made]), prepare=True)


def _new_keys(stored_events: Sequence[StoredEvent]) -> list[WithNewKey]:
    return [event for event in stored_events if type(event) is WithNewKey]


# A customer's snapshot every this many events, so a load replays fewer than this many after it
# (replaying 1,000 events took 35 ms, 10,000 took 378 ms: `python -m bench.snapshots`).
SNAPSHOT_INTERVAL = 100


class CrmEventStore(Application[Any]):
    """All aggregates of crm in one application, so one notification log gives the total order.

    Customers, the long-lived aggregates here, are snapshotted (table crm_snapshots, outside the
    notification log and the hash chain: a snapshot is a cache of what the events say). The
    `customers` repository loads the newest snapshot plus the events after it; the default
    `repository` only replays events, so loads of complaints, orders and products make no
    snapshot lookup (with one on every load, the SLA saga fell behind: p99 breach lateness
    202 -> 872 ms in `python -m bench.sla`; BENCHMARKS.md)."""

    name = "crm"
    snapshotting_intervals = {Customer: SNAPSHOT_INTERVAL}

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env={**(env or {}), "APPLICATION_RECORDER_TOPIC": get_topic(CrmRecorder)})
        if not isinstance(self.recorder, CrmRecorder):  # e.g. CRM_APPLICATION_RECORDER_TOPIC set: keys would be lost
            raise ValueError(f"crm's event store needs CrmRecorder, not {type(self.recorder).__name__}")
        self.mapper.keys = KeyStore(self.recorder.datastore)  # type: ignore[attr-defined]
        self.recorder.keys = self.mapper.keys
        from crm.infra.group_commit import GroupCommitter  # it needs MAX_CALL_BYTES from here

        self.group_commit = GroupCommitter(self)

    def construct_mapper(self) -> Mapper[Any]:
        """The library's mapper, sealing personal data under per-customer keys (see personal_data)."""
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=PersonalDataMapper)

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    def construct_repository(self) -> Repository[Any]:
        self.customers: Repository[Any] = Repository(event_store=self.events, snapshot_store=self.snapshots)
        return Repository(event_store=self.events)

    def take_snapshot(self, aggregate_id: Any, version: int | None = None,
                      projector_func: Any = project_aggregate) -> None:
        """The library's, loading through the repository that starts from the last snapshot."""
        aggregate = self.customers.get(aggregate_id, version=version, projector_func=projector_func)
        assert self.snapshots is not None
        self.snapshots.put([type(aggregate).Snapshot.take(aggregate)])

    def take_due_snapshots(self, processing: ProcessingEvent[Any]) -> None:
        """The library's snapshot rule (`_take_snapshots`, as `save` applies it) for saves made
        outside `save` (group commit). The events are stored already, so a snapshot that fails is
        logged and skipped (the next interval takes one)."""
        try:
            self._take_snapshots(processing)
        except Exception as error:  # noqa: BLE001 - the command itself succeeded
            log.warning("snapshot.failed", aggregates=[str(a) for a in processing.aggregates],
                        error=repr(error)[:200])

    def position(self) -> int:
        """The global position of the newest stored event (0 when empty)."""
        return self.recorder.max_notification_id() or 0


# What PostgreSQL (or the library, for its tracking tables' first row) says when another process
# created the same table at the same moment.
_DDL_RACES = ("tuple concurrently updated", "pg_type_typname_nsp_index", "already exists",
              "Failed to record tracking for __migration__")
T = TypeVar("T")


def open_event_store(database_url: str, attempts: int = 5) -> CrmEventStore:
    """The store, its tables created when missing (see retry_ddl_races)."""
    return retry_ddl_races(lambda: CrmEventStore(env=eventsourcing_env(database_url)), attempts)


def retry_ddl_races(make: Callable[[], T], attempts: int = 5) -> T:
    """make(), which runs the library's CREATE ... IF NOT EXISTS statements. Processes that start
    together (`crm up`'s workers, a benchmark's writers, `crm relay`'s shards) run them at once,
    and PostgreSQL can refuse one of them ("tuple concurrently updated", or a duplicate key in its
    catalog when the table is new; a `make bench` run stopped on the first): that attempt is made
    again, shortly after, when the others have finished."""
    for attempt in range(1, attempts):
        try:
            return make()
        except PersistenceError as error:
            if not any(race in str(error) for race in _DDL_RACES):
                raise
            time.sleep(0.05 * attempt)
    return make()


# The library's recorder pipelines one INSERT … RETURNING per event. Measured here: one call
# carrying ~600 KB of events (2,000 small ones, or 1,000 TierAssigned) hangs the psycopg pipeline
# for good (both ends blocked on full socket buffers), while ~300 KB never did. So a call is
# bounded by bytes as well as by count. Never raise these without re-measuring.
MAX_CALL_BYTES = 200_000


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + bytes(8)  # binary COPY header: signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"
_UUID_ROW = struct.Struct(">hi16siq")  # 4 fields; a 16-byte uuid; an 8-byte version
_TEXT_ROW = struct.Struct(">h")
_LENGTH = struct.Struct(">i")
_VERSION = struct.Struct(">iq")


def binary_copy_rows(stored: list[Any], *, uuid_ids: bool) -> bytearray:
    """The events as PostgreSQL's binary COPY format (header, one tuple per event, trailer),
    for columns (originator_id uuid or text, originator_version int8, topic text, state bytea).

    Written whole rather than through psycopg's write_row: a third of the per-event cost of a
    million-event COPY. The state goes over as raw bytes, not escaped bytea text."""
    out = bytearray(_COPY_SIGNATURE)
    topics: dict[str, bytes] = {}
    for event in stored:
        originator_id, version, topic, state = (
            event if type(event) is tuple else
            (event.originator_id, event.originator_version, event.topic, event.state))
        if uuid_ids:
            out += _UUID_ROW.pack(4, 16, originator_id.bytes, 8, version)
        else:
            text = str(originator_id).encode()
            out += _TEXT_ROW.pack(4) + _LENGTH.pack(len(text)) + text + _VERSION.pack(8, version)
        encoded = topics.get(topic)
        if encoded is None:
            encoded = topics[topic] = _LENGTH.pack(len(topic.encode())) + topic.encode()
        out += encoded
        out += _LENGTH.pack(len(state))
        out += state
    out += _COPY_TRAILER
    return out


def safe_calls(pairs: list[tuple[Any, Any]]) -> Iterator[list[tuple[Any, Any]]]:
    """Group (item, stored event) pairs into recorder calls of at most MAX_CALL_BYTES."""
    call: list[tuple[Any, Any]] = []
    size = 0
    for pair in pairs:
        if call and size + len(pair[1].state) > MAX_CALL_BYTES:
            yield call
            call, size = [], 0
        call.append(pair)
        size += len(pair[1].state)
    if call:
        yield call


def insert_in_safe_calls(store: CrmEventStore, stored: list[Any]) -> None:
    """Insert through the recorder in calls of at most MAX_CALL_BYTES (see there why)."""
    for call in safe_calls([(None, event) for event in stored]):
        store.recorder.insert_events([event for _, event in call])


def copy_events(store: CrmEventStore, stored: list[Any]) -> None:
    """Bulk append in one transaction with COPY, for large system-made batches (re-tier runs).

    `stored` holds StoredEvents or (originator_id, originator_version, topic, state) tuples.
    The same ordering guarantee as the library's recorder: its own lock statements first (an
    EXCLUSIVE lock on the events table, so ids are issued in commit order), and its channel is
    notified so following runners wake up. A clash with a concurrent writer raises the
    library's IntegrityError and nothing of the batch is stored. COPY has none of the pipelined
    inserts' size limit (see MAX_CALL_BYTES), but holds the lock for the whole batch: keep
    batches to a fraction of a second."""
    if any(type(event) is WithNewKey for event in stored):
        raise ValueError("copy_events stores no personal-data keys: append new customers through the recorder")
    recorder: Any = store.recorder
    table = sql.Identifier(recorder.datastore.schema or "public", recorder.events_table_name)
    data = binary_copy_rows(stored, uuid_ids=recorder.datastore.originator_id_type == "uuid")
    try:
        with recorder.datastore.transaction(commit=True) as curs:
            for statement in recorder.lock_table_statements:
                curs.execute(statement)
            with curs.copy(sql.SQL("COPY {} (originator_id, originator_version, topic, state) FROM STDIN "
                                   "(FORMAT BINARY)").format(table)) as copy:
                copy.write(data)
            curs.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(recorder.channel_name)))
    except errors.UniqueViolation as error:
        raise IntegrityError(str(error)) from error
