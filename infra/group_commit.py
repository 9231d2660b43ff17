"""Group commit: concurrent commands share one event-store transaction.

The library's recorder takes a table lock for each insert, so writers queue behind one another
and each waits for its own WAL flush: one process managed ~300 commands/s over HTTP, well below
what PostgreSQL can do. Here a command maps its events (in its own thread), then joins a queue.
Whoever finds no commit running becomes the leader: it takes the whole queue (up to
MAX_CALL_BYTES) and inserts it in one call, one lock and one flush for all of them. The batch
window is simply the duration of the commit before it; nothing waits on a timer.

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


class GroupCommitter:
    """Saves aggregates' new events, batching concurrent callers into one recorder call."""

    def __init__(self, store: Any, max_bytes: int = MAX_CALL_BYTES) -> None:
        self.store, self.max_bytes = store, max_bytes
        self._changed = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False
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
        with self._changed:
            self._queue.append(request)
        while True:
            with self._changed:
                while self._busy and not request.done:
                    self._changed.wait()
                if request.done:
                    break
                self._busy = True
                batch = self._take()
            try:
                self._commit(batch)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
        if request.error is not None:
            raise request.error
        return request.position

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
        self.batches, self.requests = self.batches + 1, self.requests + len(batch)
        try:
            self._insert(batch)
        except IntegrityError as error:
            if len(batch) == 1:
                batch[0].error = error
            else:
                for request in batch:  # one by one: only the conflicting commands fail
                    try:
                        self._insert([request])
                    except Exception as error:
                        request.error = error
        except Exception as error:
            for request in batch:
                request.error = error
        for request in batch:
            request.done = True

    def _insert(self, batch: list[_Request]) -> None:
        ids = self.store.recorder.insert_events([s for request in batch for s in request.stored])
        offset = 0
        for request in batch:
            offset += len(request.stored)
            request.position = ids[offset - 1]
