"""What every command handler shares: the request context, the unit of work port, results."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.sla import SlaPolicy

A = TypeVar("A")
CLOCK_SKEW = timedelta(seconds=5)


class Command(BaseModel):
    """A request to change the system: immutable data, refused whole or applied whole."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class NotFoundError(Exception):
    """No aggregate of that kind has that id."""


class UnknownReferenceError(InvalidValueError):
    """The command refers (in its body) to something that does not exist."""


class ForbiddenError(Exception):
    """The caller may not act on this aggregate (a customer key on another customer's data)."""


class VersionConflictError(Exception):
    """The aggregate changed since the client read it, or someone wrote it concurrently."""


def check_version(aggregate: Any, expected_version: int | None) -> None:
    """409 (VersionConflictError) unless the aggregate is at the version the client last saw."""
    if expected_version is not None and expected_version != aggregate.version:
        raise VersionConflictError(
            f"{type(aggregate).__name__.lower()} is at version {aggregate.version}, not {expected_version}")


@dataclass(frozen=True)
class Context:
    """Who asks, and which version of the target they last saw (If-Match)."""

    actor: str
    expected_version: int | None = None
    customer_scope: UUID | None = None  # set for self-service keys: only this customer's data

    def ensure_scope(self, customer_id: UUID) -> None:
        if self.customer_scope is not None and self.customer_scope != customer_id:
            raise ForbiddenError("this key may act only on its own customer's data")


@dataclass(frozen=True)
class Written:
    """The outcome of a successful command: the aggregate, its version, the last event's position."""

    id: UUID
    version: int
    position: int
    extra: dict[str, Any] | None = None


class UnitOfWork(Protocol):
    """What handlers need from the event store, the clock and the policies."""

    currency: str

    def get(self, kind: type[A], aggregate_id: UUID, expected_version: int | None = None) -> A: ...

    def find(self, kind: type[A], aggregate_id: UUID) -> A | None: ...

    def save(self, *aggregates: Any) -> int: ...

    def now(self) -> datetime: ...

    def sla_policy(self) -> SlaPolicy: ...

    def earlier_complaints(self, customer_id: UUID, skus: list[str]) -> list[dict[str, Any]]:
        """The customer's earlier complaints about these SKUs, from the read model (prevention)."""
        ...

    def shred_personal_data(self, customer_id: UUID) -> None:
        """Destroy the key that seals the customer's personal data (idempotent)."""
        ...


def business_time(uow: UnitOfWork, given: datetime | None, field: str) -> datetime:
    """The command's business time: given (back-dated imports) or now; never in the future."""
    now = uow.now()
    if given is None:
        return now
    if given > now + CLOCK_SKEW:
        raise InvalidValueError(f"{field} must not be in the future")
    return given.astimezone(timezone.utc)  # stored and returned in UTC, whatever offset was sent


def past_date(uow: UnitOfWork, given: date, field: str) -> date:
    if given > (uow.now() + CLOCK_SKEW).date():
        raise InvalidValueError(f"{field} must not be in the future")
    return given


def written(aggregate: Any, position: int, **extra: Any) -> Written:
    return Written(id=aggregate.id, version=aggregate.version, position=position, extra=extra or None)
