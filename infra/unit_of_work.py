"""The command handlers' port, implemented on the eventsourcing application."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from crm.aggregates.sla import DEFAULT_SLA_POLICY, SlaPolicy
from crm.commands.base import NotFoundError, VersionConflictError, check_version
from crm.infra.event_store import CrmEventStore

A = TypeVar("A")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class EventStoreUnitOfWork:
    """Loads aggregates, checks If-Match versions, saves new events and reports their position."""

    def __init__(self, store: CrmEventStore, currency: str, clock: Callable[[], datetime] = utc_now,
                 policies: Any = None, reads: Any = None) -> None:
        self.store, self.currency, self._clock = store, currency, clock
        self._policies, self._reads = policies, reads
        self._now: datetime | None = None

    def now(self) -> datetime:
        # One instant per command, so every event of a command agrees on its time.
        if self._now is None:
            self._now = self._clock()
        return self._now

    def sla_policy(self) -> SlaPolicy:
        """The SLA policy in force (version 0, the contract's defaults, until one is defined)."""
        if self._policies is None:
            return DEFAULT_SLA_POLICY
        return self._policies.current("sla", SlaPolicy.from_dict, DEFAULT_SLA_POLICY)

    def earlier_complaints(self, customer_id: UUID, skus: list[str]) -> list[dict[str, Any]]:
        from crm.queries.complaints import earlier_complaints

        return [] if self._reads is None else earlier_complaints(self._reads, customer_id, skus)

    def shred_personal_data(self, customer_id: UUID) -> None:
        from crm.infra.personal_data import shred

        shred(self.store, customer_id)

    def find(self, kind: type[A], aggregate_id: UUID) -> A | None:
        try:
            snapshotted = kind in self.store.snapshotting_intervals  # customers: from their last snapshot
            repository = self.store.customers if snapshotted else self.store.repository
            aggregate = repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, kind) else None

    def get(self, kind: type[A], aggregate_id: UUID, expected_version: int | None = None) -> A:
        aggregate = self.find(kind, aggregate_id)
        if aggregate is None:
            raise NotFoundError(f"no {kind.__name__.lower()} with id {aggregate_id}")
        check_version(aggregate, expected_version)
        return aggregate

    def save(self, *aggregates: Any) -> int:
        """Append the aggregates' new events in one transaction (group commit, see
        crm.infra.group_commit); return the last one's position."""
        try:  # in one transaction with whichever commands are saving at the same moment
            position = self.store.group_commit.save(*aggregates)
        except IntegrityError as error:
            raise VersionConflictError("a concurrent command changed this aggregate; retry") from error
        return self.store.position() if position is None else position
