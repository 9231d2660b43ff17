"""Group commit: concurrent commands share one event-store transaction.

The library's recorder takes a table lock for each insert, so writers queue behind one another
and each waits for its own WAL flush: one process managed ~300 commands/s over HTTP, well below
what PostgreSQL can do. Here a command maps its events (in its own thread), then joins a queue.
Whoever finds no commit running becomes the leader: it takes the whole queue (up to
MAX_CALL_BYTES) and inserts it in one call, one lock and one flush for all of them. The batch
window is simply the duration of the commit before it; nothing waits on a timer.

Each waiting command sleeps on an event of its own and is woken once: when its batch is done,
or when it is first in the queue as a batch ends, to lead the next one. (With one condition
variable notified after every batch, every waiting thread woke for every batch and most went
back to sleep: the condition's waits and notifications were about 11 % of an API process's GIL
samples under command load, py-spy; BENCHMARKS.md, levers table.)

A batch that fails with an integrity error (some command's aggregate was changed concurrently)
is retried one command at a time, so each command gets its own answer: the conflicting ones a
conflict, the others their positions. A command is never half-applied: its events go in one
call, in the batch or alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, StoredEvent

from crm.infra.event_store import MAX_CALL_BYTES


@dataclass(eq=False)
class _Request:
    stored: list[StoredEvent]
    size: int
    done: bool = False
    position: int = 0
    error: BaseException | None = field(default=None, repr=False)
    wake: threading.Event = field(default_factory=threading.Event, repr=False)


class GroupCommitter:
    """Saves aggregates' new events, batching concurrent callers into one recorder call."""

    def __init__(self, store: Any, max_bytes: int = MAX_CALL_BYTES) -> None:
        self.store, self.max_bytes = store, max_bytes
        self._lock = threading.Lock()
        self._queue: list[_Request] = []
        self._busy = False  # a leader is committing, or has been woken to
        self.batches = self.requests = 0  # for benchmarks and tests: how much batching happened

    def save(self, *aggregates: Any) -> int | None:
        """Store the aggregates' pending events in one transaction (shared with other callers);
        the position of the last of them, or None if there were none. Raises IntegrityError if
        an aggregate was changed concurrently (nothing of this call is stored then)."""
        processing: ProcessingEvent[Any] = ProcessingEvent()
        processing.collect_events(*aggregates)
        events = processing.events
        if not events:
            return None
        position = self.append([self.store.mapper.to_stored_event(event) for event in events])
        self.store.take_due_snapshots(processing)
        return position

    def append(self, stored: list[StoredEvent]) -> int:
        """Store events already mapped, all in one transaction shared with other callers; the
        position of the last of them. Raises as save() does, and ValueError for no events."""
        if not stored:
            raise ValueError("nothing to append")
        request = _Request(stored, sum(len(s.state) for s in stored))
        with self._lock:
            self._queue.append(request)
            lead, self._busy = not self._busy, True
        if not lead:
            try:
                request.wake.wait()  # done, or first in the queue: to lead the next batch
            except BaseException:  # interrupted (KeyboardInterrupt in a main thread): leave the queue
                self._abandon(request)
                raise
        if not request.done:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.position

    def _lead(self) -> None:
        """Commit the queue's head (this thread's request is first in it), hand the lead to the
        first request still queued, if any, and wake the batch's requests."""
        with self._lock:
            batch = self._take()
        try:
            self._commit(batch)
        except BaseException as interrupted:  # _commit records Exceptions per request; not these
            for request in batch:
                if not request.done:  # a request already answered keeps its answer
                    failure = RuntimeError("group commit interrupted: nothing of this command was stored")
                    failure.__cause__ = interrupted
                    request.error, request.done = failure, True
            raise
        finally:
            with self._lock:  # under the lock, so that an abandoning waiter sees the hand-over
                if self._queue:
                    self._queue[0].wake.set()
                else:
                    self._busy = False
            for request in batch:
                request.wake.set()

    def _abandon(self, request: _Request) -> None:
        """A waiter interrupted before its answer: out of the queue, and the lead handed on if it
        had been handed to it. One already taken into a batch is answered there (nobody waits)."""
        with self._lock:
            if request.done or request not in self._queue:
                return
            self._queue.remove(request)
            if request.wake.is_set():  # it was to lead the next batch
                if self._queue:
                    self._queue[0].wake.set()
                else:
                    self._busy = False

    def _take(self) -> list[_Request]:
        """The queue's head, up to max_bytes (at least one request, however large)."""
        size, count = 0, 0
        for request in self._queue:
            if count and size + request.size > self.max_bytes:
                break
            size, count = size + request.size, count + 1
        batch, self._queue = self._queue[:count], self._queue[count:]
        return batch

    def _commit(self, batch: list[_Request]) -> None:
        """Each request of the batch answered (done, with its position or its error) as soon as
        its outcome is known."""
        self.batches, self.requests = self.batches + 1, self.requests + len(batch)
        try:
            self._insert(batch)
        except IntegrityError as error:
            if len(batch) == 1:
                batch[0].error, batch[0].done = error, True
            else:
                for request in batch:  # one by one: only the conflicting commands fail
                    try:
                        self._insert([request])
                    except Exception as error:
                        request.error, request.done = error, True
        except Exception as error:
            for request in batch:
                request.error, request.done = error, True

    def _insert(self, batch: list[_Request]) -> None:
        ids = self.store.recorder.insert_events([s for request in batch for s in request.stored])
        offset = 0
        for request in batch:
            offset += len(request.stored)
            request.position, request.done = ids[offset - 1], True
