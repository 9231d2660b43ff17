"""Group commit: concurrent commands share a transaction, yet each gets its own correct answer."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from eventsourcing.persistence import IntegrityError

from crm.aggregates.customer import Customer
from crm.commands.base import Context, VersionConflictError
from crm.commands.bus import dispatch
from crm.commands.customers import RegisterCustomer, UpdateProfile
from crm.infra.group_commit import GroupCommitter, _Request
from crm.infra.unit_of_work import EventStoreUnitOfWork

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)


def test_concurrent_commands_are_batched_and_each_gets_the_position_of_its_own_event(fresh_system) -> None:
    rt, _ = fresh_system(with_runners=False)
    committer = rt.store.group_commit
    results: list[tuple[int, object]] = []
    errors: list[BaseException] = []

    def register(n: int) -> None:
        ctx = Context(actor="test")
        try:
            for i in range(20):  # a unit of work per command, as the API makes one per request
                written = dispatch(RegisterCustomer(name=f"C{n}-{i}"), EventStoreUnitOfWork(rt.store, "EUR"), ctx)
                results.append((written.position, written.id))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 320
    assert len({position for position, _ in results}) == 320 and rt.store.position() == 320
    by_position = {n.id: n.originator_id for n in rt.store.recorder.select_notifications(start=1, limit=400)}
    assert all(by_position[position] == customer for position, customer in results)
    assert committer.requests == 320 and committer.batches < committer.requests  # shared transactions


def test_a_conflict_in_a_batch_fails_only_the_conflicting_command(fresh_system) -> None:
    rt, _ = fresh_system(with_runners=False)
    first, second = (Customer.register(name=n, occurred_at=NOW, actor="t") for n in ("First", "Second"))
    rt.store.save(first, second)
    stale = rt.store.repository.get(second.id)
    winner = rt.store.repository.get(second.id)
    winner.update_profile({"region": "North"}, occurred_at=NOW, actor="t")
    rt.store.save(winner)  # `stale` is now behind: its next event's version is taken
    third = Customer.register(name="Third", occurred_at=NOW, actor="t")
    first.update_profile({"region": "East"}, occurred_at=NOW, actor="t")
    stale.update_profile({"region": "South"}, occurred_at=NOW, actor="t")
    head = rt.store.position()
    committer = GroupCommitter(rt.store)
    batch = [_Request(s, 1) for s in ([rt.store.mapper.to_stored_event(e) for e in a.collect_events()]
                                      for a in (first, stale, third))]
    committer._commit(batch)
    assert [r.done for r in batch] == [True, True, True]
    assert isinstance(batch[1].error, IntegrityError) and batch[0].error is None and batch[2].error is None
    # (the failed batch insert used up log ids, as any failed insert does: the log has a gap there)
    assert head < batch[0].position < batch[2].position == rt.store.position()
    stored_at = {n.id: n.originator_id for n in rt.store.recorder.select_notifications(start=head + 1, limit=10)}
    assert stored_at == {batch[0].position: first.id, batch[2].position: third.id}
    assert rt.store.repository.get(first.id).profile["region"] == "East"
    assert rt.store.repository.get(second.id).profile["region"] == "North"
    assert rt.store.repository.get(third.id).profile["name"] == "Third"


def test_a_stale_command_through_the_unit_of_work_is_a_version_conflict(fresh_system) -> None:
    rt, _ = fresh_system(with_runners=False)
    uow, ctx = EventStoreUnitOfWork(rt.store, "EUR"), Context(actor="test")
    customer = dispatch(RegisterCustomer(name="Once"), uow, ctx)
    stale = rt.store.repository.get(customer.id)
    dispatch(UpdateProfile(customer_id=customer.id, region="North"), uow, ctx)
    stale.update_profile({"region": "South"}, occurred_at=NOW, actor="t")
    with pytest.raises(VersionConflictError):
        uow.save(stale)
    assert rt.store.repository.get(customer.id).profile["region"] == "North"


def test_events_mapped_beforehand_are_appended_in_one_call_or_not_at_all(fresh_system) -> None:
    rt, _ = fresh_system(with_runners=False)
    customer = Customer.register(name="Mapped", occurred_at=NOW, actor="t")
    customer.update_profile({"region": "North"}, occurred_at=NOW, actor="t")
    stored = [rt.store.mapper.to_stored_event(e) for e in customer.collect_events()]
    head = rt.store.position()
    assert rt.store.group_commit.append(stored) == head + 2 == rt.store.position()
    assert rt.store.repository.get(customer.id).profile["region"] == "North"
    again = Customer.register(name="Other", occurred_at=NOW, actor="t")
    clash = [rt.store.mapper.to_stored_event(e) for e in again.collect_events()] + stored[1:]
    with pytest.raises(IntegrityError):  # the second customer's event goes nowhere either
        rt.store.group_commit.append(clash)
    assert rt.store.repository.get(customer.id).version == 2 and again.id not in rt.store.repository
    with pytest.raises(ValueError):  # no position to give; in a batch it would have taken another's
        rt.store.group_commit.append([])
