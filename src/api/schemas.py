"""Response bodies of the write API (they are the OpenAPI spec's response schemas)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel

from crm.commands.base import Written


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
