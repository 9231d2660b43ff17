"""Response bodies of the write API (they are the OpenAPI spec's response schemas), and the
bounded types every request value is declared with (issue #9, "Limits").

The value types shared with the commands (texts, money, dates, instants) are declared once in
crm.commands.limits (commands may not import the API) and re-exported here; the ones only the
API's own request models and parameters use are declared below.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.sla import parse_iso_duration
from crm.commands.base import Written
from crm.commands.limits import (FIRST_DAY, FIRST_INSTANT, LAST_DAY, LAST_INSTANT, MAX_MONEY, AnniversaryDate,  # noqa: F401
                                 Comment, Label, LongText, Money, Name, Note, OptionalReason, PositiveMoney,
                                 Printable, Quantity, Reason, SaneDate, SaneInstant, ShortText)

MAX_POSITION = 2**63 - 1  # event store positions are PostgreSQL bigints
MAX_PAGE_REQUEST = 1_000_000  # a page size beyond this is refused; any size is served capped at 500
MAX_SLA_DURATION = timedelta(days=366)

PolicyKey = Annotated[str, StringConstraints(min_length=1, max_length=32), Printable]  # an indicator or tier name
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
ClockTime = Annotated[str, StringConstraints(min_length=1, max_length=15), Printable]  # "09:00" .. "09:00:00.000000"
IsoDay = Annotated[str, StringConstraints(min_length=1, max_length=10), Printable]  # "2025-12-25"
TimeZoneName = Annotated[str, StringConstraints(min_length=1, max_length=64), Printable]  # IANA names are <= 32


def _short_enough(text: str) -> str:
    """An SLA duration of at most a year (a longer one would push deadlines past any calendar);
    a malformed one is left to the policy's own check, which names the problem."""
    try:
        duration = parse_iso_duration(text)
    except InvalidValueError:
        return text
    if duration > MAX_SLA_DURATION:
        raise ValueError("an SLA duration may be at most P366D")
    return text


SlaDuration = Annotated[str, StringConstraints(min_length=1, max_length=32), Printable, AfterValidator(_short_enough)]


class WriteResult(BaseModel):
    """Every successful write: the aggregate, its new version, the global position of its last event."""

    id: UUID
    version: int
    position: int

    @classmethod
    def of(cls, written: Written):  # type: ignore[no-untyped-def]
        return cls(id=written.id, version=written.version, position=written.position, **(written.extra or {}))


class ProductWritten(WriteResult):
    sku: str


class OrderStatus(WriteResult):
    status: str
    outstanding: Decimal | None = None
    warnings: list["ComplaintWarning"] | None = None


class ComplaintWarning(BaseModel):
    """An earlier complaint by this customer about a SKU in the order (prevention)."""

    complaint_id: UUID
    sku: str
    status: str
    filed_at: datetime
    summary: str
    resolution: str | None = None


class OrderPlaced(WriteResult):
    forecast_profit: Decimal
    forecast_margin: Decimal | None
    currency: str
    warnings: list[ComplaintWarning]


class ComplaintFiled(WriteResult):
    tier: str | None
    due_at: datetime
    warn_at: datetime


class ComplaintStatus(WriteResult):
    status: str
