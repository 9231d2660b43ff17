"""Group commit's hand-over between threads, against a recorder in memory: many threads, slow and
failing commits; every caller gets its own answer, none waits for ever, batches are shared."""

from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace
from typing import Any

from eventsourcing.persistence import IntegrityError, StoredEvent

from crm.infra.group_commit import GroupCommitter


class MemoryRecorder:
    """insert_events as the library's: all or nothing, the new rows' ids; a clash on a taken
    (originator_id, version) raises IntegrityError. Each call takes a little time, as a commit does."""

    def __init__(self) -> None:
        self.rows: list[StoredEvent] = []
        self.taken: set[tuple[Any, int]] = set()
        self.calls = 0
        self.busy = threading.Lock()  # a second concurrent call would be a bug in the committer

    def insert_events(self, stored: list[StoredEvent], **_: Any) -> list[int]:
        assert self.busy.acquire(blocking=False), "two commits at once"
        try:
            self.calls += 1
            time.sleep(random.uniform(0, 0.002))
            keys = [(s.originator_id, s.originator_version) for s in stored]
            if len(set(keys)) < len(keys) or self.taken.intersection(keys):
                raise IntegrityError("clash")
            self.taken.update(keys)
            self.rows.extend(stored)
            return list(range(len(self.rows) - len(stored) + 1, len(self.rows) + 1))
        finally:
            self.busy.release()


def event(originator: str, version: int) -> StoredEvent:
    return StoredEvent(originator_id=originator, originator_version=version, topic="t", state=b"{}")


def test_many_threads_each_get_their_own_position_or_their_own_conflict() -> None:
    recorder = MemoryRecorder()
    committer = GroupCommitter(SimpleNamespace(recorder=recorder), max_bytes=10)  # 5 events per batch at most
    answers: dict[tuple[int, int], Any] = {}

    def work(thread: int) -> None:
        for n in range(60):
            # every seventh call clashes with the thread's own previous event (the same version again)
            version = n if n % 7 == 0 and n else n + 1
            try:
                answers[(thread, n)] = committer.append([event(f"{thread}", version)])
            except IntegrityError:
                answers[(thread, n)] = "conflict"

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(24)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a caller was never woken"
    assert len(answers) == 24 * 60
    conflicts = {k for k, v in answers.items() if v == "conflict"}
    assert conflicts == {(t, n) for t in range(24) for n in range(7, 60, 7)}
    positions = {k: v for k, v in answers.items() if v != "conflict"}
    assert sorted(positions.values()) == list(range(1, len(recorder.rows) + 1))  # each its own row
    for (thread, n), position in positions.items():
        row = recorder.rows[position - 1]
        assert row.originator_id == f"{thread}" and row.originator_version == n + 1
    assert committer.requests >= len(answers) and committer.batches < committer.requests  # shared


class Interrupted(BaseException):
    """As KeyboardInterrupt would arrive: not an Exception, so _commit does not record it."""


def test_an_interrupted_leader_leaves_the_answers_already_given_and_fails_only_the_rest() -> None:
    """A batch clashes, is retried one by one, and the leader is interrupted on the third: the
    second command was stored and gets its position; the third gets an error naming the cause;
    the lead is free again."""
    gate, calls = threading.Event(), []

    class Recorder:
        def insert_events(self, stored: list[StoredEvent], **_: Any) -> list[int]:
            calls.append([s.originator_id for s in stored])
            if len(calls) == 1:
                gate.wait(10)  # holds the first batch (w) until a, b and c are queued behind it
                return [1]
            if len(stored) > 1:
                raise IntegrityError("clash in the batch")
            if stored[0].originator_id == "c":
                raise Interrupted()
            return [len(calls)]

    committer = GroupCommitter(SimpleNamespace(recorder=Recorder()))
    answers: dict[str, Any] = {}

    def append(name: str) -> None:
        try:
            answers[name] = committer.append([event(name, 1)])
        except BaseException as error:  # noqa: BLE001 - the answer under test
            answers[name] = error

    threads = {name: threading.Thread(target=append, args=(name,), daemon=True) for name in "wabc"}
    threads["w"].start()
    for name, queued in (("a", 1), ("b", 2), ("c", 3)):
        while len(calls) < 1 or len(committer._queue) < queued - 1:
            time.sleep(0.001)
        threads[name].start()
        while len(committer._queue) < queued:
            time.sleep(0.001)
    gate.set()
    for thread in threads.values():
        thread.join(10)
    assert calls == [["w"], ["a", "b", "c"], ["a"], ["b"], ["c"]]
    assert answers["w"] == 1 and answers["b"] == 4  # b was stored: its position, not an error
    assert isinstance(answers["a"], Interrupted)  # a led the batch: the interruption is raised where it hit
    assert isinstance(answers["c"], RuntimeError) and isinstance(answers["c"].__cause__, Interrupted)
    assert committer._busy is False and committer._queue == []


def test_a_waiter_that_leaves_hands_on_the_lead_it_was_given() -> None:
    committer = GroupCommitter(SimpleNamespace(recorder=MemoryRecorder()))
    first, second = (committer_request(committer, name) for name in "xy")
    committer._busy = True
    first.wake.set()  # handed the lead, then interrupted before taking it
    committer._abandon(first)
    assert committer._queue == [second] and second.wake.is_set() and committer._busy
    second_left = committer_request(committer, "z")
    committer._abandon(second_left)  # not handed the lead: only leaves the queue
    assert committer._queue == [second]
    committer._queue.clear()
    committer._queue.append(second)
    committer._abandon(second)  # the last one, with the lead: nobody leads now
    assert committer._queue == [] and committer._busy is False


def committer_request(committer: GroupCommitter, name: str) -> Any:
    from crm.infra.group_commit import _Request

    request = _Request([event(name, 1)], 2)
    committer._queue.append(request)
    return request
