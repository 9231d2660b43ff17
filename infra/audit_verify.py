"""Verification of the hash chain: recompute it from the stored events and compare, in one pass.

The events and the chain rows are streamed side by side (server-side cursors in position order,
each fetched a batch ahead in a thread, so PostgreSQL produces rows while Python hashes) and
merged: an event
without a chain row was inserted, a chain row without an event was deleted, a hash that
differs means edited or reordered content. Only positions up to the chainer's tracked position
are judged; later events are simply not chained yet.
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from psycopg import sql
from psycopg_pool import ConnectionPool

from crm.infra.audit_chain import CHECKPOINT_FORMAT, GENESIS
from crm.infra.audit_schema import CHAIN, chained_position, ensure_schema, events_table
from crm.infra.event_store import CrmEventStore

BATCH = 10_000
# The same bytes as audit_chain.canonical(), built by PostgreSQL (US = chr(31)).
CONTENT = sql.SQL("convert_to(concat_ws(chr(31), notification_id, originator_id, originator_version, "
                  "coalesce(topic, ''), octet_length(state)) || chr(31), 'UTF8') || state")
_HEX_HASH = re.compile(r"^[0-9a-f]{64}$")
Outcome = tuple[int, int | None, str | None]  # events checked, first broken position, what broke


class BadCheckpointError(ValueError):
    """The checkpoint document is not one `export_checkpoint` wrote."""


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of a verification: ok, how many events it checked, where the chain first breaks."""

    ok: bool
    events_checked: int
    first_broken_position: int | None
    chained_position: int
    from_position: int = 0
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(store: CrmEventStore, pool: ConnectionPool, from_checkpoint: dict[str, Any] | None = None
           ) -> VerifyReport:
    """Recompute the chain (from the start, or from an exported checkpoint) and compare."""
    ensure_schema(pool)
    anchor = _anchor(from_checkpoint)
    with pool.connection() as conn:
        chained = chained_position(conn.cursor())
    start = anchor[0] if anchor else 1
    if anchor and anchor[0] > chained:
        return VerifyReport(False, 0, anchor[0], chained, start, "the checkpoint lies beyond the chained position")
    events_query = sql.SQL("SELECT notification_id, {} FROM {} WHERE notification_id BETWEEN {} AND {} "
                           "ORDER BY notification_id").format(CONTENT, events_table(store), sql.Literal(start),
                                                              sql.Literal(chained))
    chain_query = sql.SQL("SELECT position, hash FROM {} WHERE position BETWEEN {} AND {} ORDER BY position"
                          ).format(CHAIN, sql.Literal(start), sql.Literal(chained))
    with pool.connection() as events_conn, pool.connection() as chain_conn:
        previous = _hash_before(chain_conn, start)
        with _batches(events_conn, events_query) as events, _batches(chain_conn, chain_query) as chain:
            checked, broken, problem = _compare(events, chain, previous, anchor)
    return VerifyReport(broken is None, checked, broken, chained, start, problem)


class _Prefetch:
    """Fetches a server-side cursor's next batch in a thread while the caller works on this one."""

    def __init__(self, curs: Any) -> None:
        self._batches: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(curs,), name="audit-verify-fetch", daemon=True)
        self._thread.start()

    def _fill(self, curs: Any) -> None:
        try:
            while not self._stopped.is_set():
                rows = curs.fetchmany(BATCH)
                self._batches.put(rows)
                if not rows:
                    return
        except Exception as error:  # handed to the caller, which raises it
            self._batches.put(error)

    def next_batch(self) -> list[tuple[int, bytes]]:
        batch = self._batches.get()
        if isinstance(batch, Exception):
            raise batch
        return batch

    def close(self) -> None:
        self._stopped.set()
        while self._thread.is_alive():  # unblock a fetch waiting for room in the queue
            try:
                self._batches.get(timeout=0.05)
            except queue.Empty:
                pass


@contextmanager
def _batches(conn: Any, query: sql.Composable) -> Iterator[_Prefetch]:
    """Batches of (position, bytes) rows from a binary server-side cursor, one batch ahead."""
    with conn.cursor(name="audit_verify", binary=True) as curs:
        curs.execute(query)
        prefetch = _Prefetch(curs)
        try:
            yield prefetch
        finally:
            prefetch.close()


def _compare(events: _Prefetch, chain: _Prefetch, previous: bytes, anchor: tuple[int, bytes] | None) -> Outcome:
    """Walk both streams batch by batch. While a batch's positions agree (the usual case, checked
    as whole lists) the loop only hashes and compares; a disagreement is a row missing on one side."""
    sha256, checked = hashlib.sha256, 0
    while True:
        event_rows, chain_rows = events.next_batch(), chain.next_batch()
        if not event_rows and not chain_rows:
            return checked, None, None
        if checked == 0 and anchor and not (event_rows and chain_rows
                                            and event_rows[0][0] == chain_rows[0][0] == anchor[0]):
            return 0, anchor[0], "the checkpoint's event or chain row is missing"
        aligned = _aligned(event_rows, chain_rows)
        for (position, content), (_, stored) in zip(event_rows[:aligned], chain_rows[:aligned]):
            previous = sha256(previous + content).digest()
            checked += 1
            if previous != stored:
                return checked, position, "the event's content differs from what was chained (edited or reordered)"
            if anchor and checked == 1 and previous != anchor[1]:
                return checked, position, "the chain differs from the checkpoint"
        if aligned < len(event_rows) or aligned < len(chain_rows):
            return (checked, *_divergence(event_rows[aligned:], chain_rows[aligned:]))


def _aligned(event_rows: Sequence[tuple[int, bytes]], chain_rows: Sequence[tuple[int, bytes]]) -> int:
    """How many leading rows of both batches are at the same positions."""
    if len(event_rows) == len(chain_rows) and [r[0] for r in event_rows] == [r[0] for r in chain_rows]:
        return len(event_rows)
    for i, (event, link) in enumerate(zip(event_rows, chain_rows)):
        if event[0] != link[0]:
            return i
    return min(len(event_rows), len(chain_rows))


def _divergence(event_rows: Sequence[tuple[int, bytes]], chain_rows: Sequence[tuple[int, bytes]]
                ) -> tuple[int, str]:
    if not chain_rows or (event_rows and event_rows[0][0] < chain_rows[0][0]):
        return event_rows[0][0], "an event that is not in the chain (inserted)"
    return chain_rows[0][0], "a chained event is missing from the store (deleted)"


def _hash_before(conn: Any, position: int) -> bytes:
    row = conn.execute(sql.SQL("SELECT hash FROM {} WHERE position < %s ORDER BY position DESC LIMIT 1")
                       .format(CHAIN), (position,)).fetchone()
    return bytes(row[0]) if row else GENESIS


def _anchor(checkpoint: dict[str, Any] | None) -> tuple[int, bytes] | None:
    """(position, hash) of an exported checkpoint, checked for shape."""
    if checkpoint is None:
        return None
    if checkpoint.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise BadCheckpointError(f"unknown checkpoint format {checkpoint.get('format')!r}")
    position, digest = checkpoint.get("position"), checkpoint.get("hash")
    if not isinstance(position, int) or isinstance(position, bool) or position < 1:
        raise BadCheckpointError("a checkpoint needs a positive integer 'position'")
    if not isinstance(digest, str) or not _HEX_HASH.match(digest):
        raise BadCheckpointError("a checkpoint needs 'hash': 64 lowercase hex digits")
    return position, bytes.fromhex(digest)
