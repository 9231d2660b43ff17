"""The Order aggregate: placement with frozen costs and forecast profit, then fulfilment and payment."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Mapping, Sequence
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from crm.aggregates.customer import Customer, CustomerInactiveError
from crm.aggregates.errors import InvalidValueError, RuleViolationError
from crm.aggregates.product import Product
from crm.aggregates.values import require_money, require_text

MAX_LINES = 500
MAX_QUANTITY = 1_000_000
MARGIN_PLACES = Decimal("0.0001")


class UnknownProductError(InvalidValueError):
    """An order line names a SKU no product has."""


class OrderStateError(RuleViolationError):
    """The order's state does not allow this step."""


class OverpaymentError(RuleViolationError):
    """A payment would take the amount paid above the invoiced amount."""


def price_lines(lines: Sequence[Mapping[str, Any]], products: Mapping[str, Product],
                on: date) -> list[dict[str, Any]]:
    """Check each line and freeze the standard cost in force on the order's day."""
    if not 1 <= len(lines) <= MAX_LINES:
        raise InvalidValueError(f"an order has 1-{MAX_LINES} lines")
    priced = []
    for line in lines:
        quantity, unit_price = line["quantity"], require_money("unit_price", line["unit_price"])
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 < quantity <= MAX_QUANTITY:
            raise InvalidValueError(f"quantity must be a whole number 1-{MAX_QUANTITY}")
        product = products.get(line["sku"])
        if product is None:
            raise UnknownProductError(f"unknown sku '{line['sku']}'")
        cost = product.cost_on(on)
        priced.append({"sku": line["sku"], "product_id": product.id, "quantity": quantity,
                       "unit_price": unit_price, "standard_cost": cost,
                       "revenue": unit_price * quantity, "cost": cost * quantity})
    return priced


def forecast(lines: Sequence[Mapping[str, Any]]) -> tuple[Decimal, Decimal, Decimal, Decimal | None]:
    """Revenue, cost, profit and margin (profit / revenue; None when revenue is zero)."""
    revenue = sum((line["revenue"] for line in lines), Decimal(0))
    cost = sum((line["cost"] for line in lines), Decimal(0))
    profit = revenue - cost
    margin = (profit / revenue).quantize(MARGIN_PLACES) if revenue else None
    return revenue, cost, profit, margin


class Order(Aggregate):
    """A customer's order: what was sold, at what price and standard cost, and how it was paid."""

    @classmethod
    def place(cls, *, customer: Customer, products: Mapping[str, Product],
              lines: Sequence[Mapping[str, Any]], currency: str, occurred_at: datetime,
              warned_complaint_ids: Sequence[UUID] = (), actor: str) -> Order:
        if not customer.active:
            raise CustomerInactiveError("a deactivated customer cannot place orders")
        if not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
            raise InvalidValueError("currency must be an ISO 4217 code such as EUR")
        priced = price_lines(lines, products, occurred_at.date())
        revenue, cost, profit, margin = forecast(priced)
        require_money("the order's total", revenue)  # else it could never be paid in one payment
        return cls(customer_id=customer.id, lines=priced, currency=currency, revenue=revenue,
                   cost=cost, forecast_profit=profit, forecast_margin=margin,
                   warned_complaint_ids=list(warned_complaint_ids), occurred_at=occurred_at, actor=actor)

    @event("Placed")
    def __init__(self, *, customer_id: UUID, lines: list[dict[str, Any]], currency: str,
                 revenue: Decimal, cost: Decimal, forecast_profit: Decimal,
                 forecast_margin: Decimal | None, warned_complaint_ids: list[UUID],
                 occurred_at: datetime, actor: str) -> None:
        self.customer_id, self.lines, self.currency = customer_id, lines, currency
        self.revenue, self.forecast_profit, self.forecast_margin = revenue, forecast_profit, forecast_margin
        self.placed_at = occurred_at
        self.warned_complaint_ids = warned_complaint_ids  # complaints the placing user was warned about
        self.shipped_at: datetime | None = None
        self.invoiced_amount: Decimal | None = None
        self.paid = Decimal(0)
        self.cancelled = False

    @property
    def status(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.invoiced_amount is not None:
            return "paid" if self.paid >= self.invoiced_amount else "invoiced"
        return "shipped" if self.shipped_at else "placed"

    def _refuse_unless(self, allowed: bool, action: str) -> None:
        if not allowed:
            raise OrderStateError(f"cannot {action} an order that is {self.status}")

    def ship(self, *, occurred_at: datetime, actor: str) -> None:
        self._refuse_unless(not self.cancelled and self.shipped_at is None, "ship")
        self._shipped(occurred_at=occurred_at, actor=actor)

    @event("Shipped")
    def _shipped(self, occurred_at: datetime, actor: str) -> None:
        self.shipped_at = occurred_at

    def invoice(self, *, due_on: date, occurred_at: datetime, actor: str) -> None:
        self._refuse_unless(self.status in ("placed", "shipped"), "invoice")
        if due_on < occurred_at.date():
            raise InvalidValueError("due_on must not be before the invoice date")
        self._invoiced(amount=self.revenue, due_on=due_on, occurred_at=occurred_at, actor=actor)

    @event("Invoiced")
    def _invoiced(self, amount: Decimal, due_on: date, occurred_at: datetime, actor: str) -> None:
        self.invoiced_amount = amount

    def receive_payment(self, *, amount: Decimal, occurred_at: datetime, actor: str) -> None:
        """A partial or full payment; more than the outstanding amount is refused."""
        self._refuse_unless(self.status == "invoiced", "take a payment for")
        require_money("amount", amount, positive=True)
        assert self.invoiced_amount is not None
        if self.paid + amount > self.invoiced_amount:
            raise OverpaymentError(f"payment exceeds the outstanding {self.invoiced_amount - self.paid}")
        self._payment_received(amount=amount, paid_total=self.paid + amount,
                               outstanding=self.invoiced_amount - self.paid - amount,
                               occurred_at=occurred_at, actor=actor)

    @event("PaymentReceived")
    def _payment_received(self, amount: Decimal, paid_total: Decimal, outstanding: Decimal,
                          occurred_at: datetime, actor: str) -> None:
        self.paid = paid_total

    def cancel(self, *, reason: str, occurred_at: datetime, actor: str) -> None:
        """Cancel before invoicing; an invoiced order is settled, not cancelled."""
        self._refuse_unless(self.status in ("placed", "shipped"), "cancel")
        self._cancelled(reason=require_text("reason", reason, max_len=500), occurred_at=occurred_at,
                        actor=actor)

    @event("Cancelled")
    def _cancelled(self, reason: str, occurred_at: datetime, actor: str) -> None:
        self.cancelled = True


