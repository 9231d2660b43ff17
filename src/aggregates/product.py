"""The Product aggregate: a SKU with a list price and a dated standard cost."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.values import optional_text, require_money, require_text

_SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would let a trailing newline in
SKU_NAMESPACE = UUID("6f1c1e4e-6c5b-4a53-9a43-5f0c2b7f8a10")


def product_id(sku: str) -> UUID:
    """The SKU is the natural key: the product id is derived from it, always the same."""
    return uuid5(SKU_NAMESPACE, sku)


def require_sku(sku: str) -> str:
    if not isinstance(sku, str) or not _SKU.fullmatch(sku):
        raise InvalidValueError("sku must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return sku


class Product(Aggregate):
    """Something we sell: its list price and what it costs us (standard cost), over time."""

    @staticmethod
    def create_id(sku: str, **_: Any) -> UUID:
        return product_id(sku)

    @classmethod
    def register(cls, *, sku: str, name: str, standard_cost: Decimal, list_price: Decimal,
                 supplier: str | None, occurred_at: datetime, actor: str) -> Product:
        return cls(sku=require_sku(sku), name=require_text("name", name),
                   standard_cost=require_money("standard_cost", standard_cost),
                   list_price=require_money("list_price", list_price),
                   supplier=optional_text("supplier", supplier), occurred_at=occurred_at, actor=actor)

    @event("Registered")
    def __init__(self, *, sku: str, name: str, standard_cost: Decimal, list_price: Decimal,
                 supplier: str | None, occurred_at: datetime, actor: str) -> None:
        self.sku, self.name, self.list_price, self.supplier = sku, name, list_price, supplier
        # (effective_from, cost) pairs; the registration cost applies to any earlier date too.
        self.costs: list[tuple[date | None, Decimal]] = [(None, standard_cost)]

    @property
    def standard_cost(self) -> Decimal:
        return self.costs[-1][1]

    def cost_on(self, day: date) -> Decimal:
        """The standard cost in force on a day (what an order placed that day freezes)."""
        cost = self.costs[0][1]
        for effective_from, value in self.costs:
            if effective_from is None or effective_from <= day:
                cost = value
        return cost

    def change_standard_cost(self, *, standard_cost: Decimal, effective_from: date,
                             occurred_at: datetime, actor: str) -> None:
        """A new standard cost from a date on; orders already placed keep the cost they froze."""
        latest = self.costs[-1][0]
        if latest is not None and effective_from < latest:
            raise InvalidValueError("effective_from must not precede the latest cost change")
        self._standard_cost_changed(previous_cost=self.standard_cost,
                                    standard_cost=require_money("standard_cost", standard_cost),
                                    effective_from=effective_from, occurred_at=occurred_at, actor=actor)

    @event("StandardCostChanged")
    def _standard_cost_changed(self, previous_cost: Decimal, standard_cost: Decimal,
                               effective_from: date, occurred_at: datetime, actor: str) -> None:
        self.costs.append((effective_from, standard_cost))
