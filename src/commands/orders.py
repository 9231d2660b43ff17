"""Commands on orders: place (freezing standard costs), ship, invoice, take payments, cancel."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import Field

from crm.aggregates.customer import Customer
from crm.aggregates.order import MAX_LINES, Order
from crm.aggregates.product import Product, product_id
from crm.commands.base import (Command, Context, UnitOfWork, UnknownReferenceError, Written,
                               business_time, written)
from crm.commands.limits import Money, PositiveMoney, Quantity, Reason, SaneDate, SaneInstant
from crm.commands.products import Sku


class OrderLine(Command):
    """One SKU at a quantity and unit price."""

    sku: Sku
    quantity: Quantity
    unit_price: Money


class PlaceOrder(Command):
    """Place an order; each line freezes the product's standard cost in force that day."""

    customer_id: UUID
    lines: Annotated[list[OrderLine], Field(min_length=1, max_length=MAX_LINES)]
    placed_at: SaneInstant | None = None


class ShipDetails(Command):
    shipped_at: SaneInstant | None = None


class ShipOrder(ShipDetails):
    """Record that the order left the warehouse."""

    order_id: UUID


class InvoiceDetails(Command):
    due_on: SaneDate
    invoiced_at: SaneInstant | None = None


class InvoiceOrder(InvoiceDetails):
    """Invoice the order's full amount, due on a date."""

    order_id: UUID


class PaymentDetails(Command):
    amount: PositiveMoney
    received_at: SaneInstant | None = None


class ReceivePayment(PaymentDetails):
    """Record a (partial) payment against the invoice."""

    order_id: UUID


class CancelDetails(Command):
    reason: Reason


class CancelOrder(CancelDetails):
    """Cancel an order that has not been invoiced."""

    order_id: UUID


def place_order(cmd: PlaceOrder, uow: UnitOfWork, ctx: Context) -> Written:
    customer = uow.find(Customer, cmd.customer_id)
    if customer is None:
        raise UnknownReferenceError(f"customer {cmd.customer_id} does not exist")
    skus = sorted({line.sku for line in cmd.lines})
    products = {sku: p for sku in skus if (p := uow.find(Product, product_id(sku))) is not None}
    warnings = uow.earlier_complaints(customer.id, skus)
    order = Order.place(customer=customer, products=products, lines=[l.model_dump() for l in cmd.lines],
                        currency=uow.currency, occurred_at=business_time(uow, cmd.placed_at, "placed_at"),
                        warned_complaint_ids=sorted({w["complaint_id"] for w in warnings}), actor=ctx.actor)
    return written(order, uow.save(order), forecast_profit=order.forecast_profit,
                   forecast_margin=order.forecast_margin, currency=order.currency, warnings=warnings)



def ship_order(cmd: ShipOrder, uow: UnitOfWork, ctx: Context) -> Written:
    order = uow.get(Order, cmd.order_id, ctx.expected_version)
    order.ship(occurred_at=business_time(uow, cmd.shipped_at, "shipped_at"), actor=ctx.actor)
    warnings = uow.earlier_complaints(order.customer_id, sorted({line["sku"] for line in order.lines}))
    return written(order, uow.save(order), status=order.status, warnings=warnings)


def invoice_order(cmd: InvoiceOrder, uow: UnitOfWork, ctx: Context) -> Written:
    order = uow.get(Order, cmd.order_id, ctx.expected_version)
    order.invoice(due_on=cmd.due_on, occurred_at=business_time(uow, cmd.invoiced_at, "invoiced_at"), actor=ctx.actor)
    return written(order, uow.save(order), status=order.status)


def receive_payment(cmd: ReceivePayment, uow: UnitOfWork, ctx: Context) -> Written:
    order = uow.get(Order, cmd.order_id, ctx.expected_version)
    order.receive_payment(amount=cmd.amount, occurred_at=business_time(uow, cmd.received_at, "received_at"),
                          actor=ctx.actor)
    return written(order, uow.save(order), status=order.status,
                   outstanding=order.invoiced_amount - order.paid)


def cancel_order(cmd: CancelOrder, uow: UnitOfWork, ctx: Context) -> Written:
    order = uow.get(Order, cmd.order_id, ctx.expected_version)
    order.cancel(reason=cmd.reason, occurred_at=uow.now(), actor=ctx.actor)
    return written(order, uow.save(order), status=order.status)
