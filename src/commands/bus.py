"""One table maps each command type to its handler; entry points build a command and dispatch it."""

from __future__ import annotations

from typing import Any, Callable

from crm.commands import complaints, customers, orders, products
from crm.commands.base import Command, Context, UnitOfWork, Written

HANDLERS: dict[type[Command], Callable[[Any, UnitOfWork, Context], Written]] = {
    customers.RegisterCustomer: customers.register_customer,
    customers.UpdateProfile: customers.update_profile,
    customers.RecordVisit: customers.record_visit,
    customers.OverrideTier: customers.override_tier,
    customers.DeactivateCustomer: customers.deactivate_customer,
    customers.ReactivateCustomer: customers.reactivate_customer,
    customers.ErasePersonalData: customers.erase_personal_data,
    products.RegisterProduct: products.register_product,
    products.ChangeStandardCost: products.change_standard_cost,
    orders.PlaceOrder: orders.place_order,
    orders.ShipOrder: orders.ship_order,
    orders.InvoiceOrder: orders.invoice_order,
    orders.ReceivePayment: orders.receive_payment,
    orders.CancelOrder: orders.cancel_order,
    complaints.FileComplaint: complaints.file_complaint,
    complaints.ComplaintStep: complaints.take_complaint_step,
}


def dispatch(command: Command, uow: UnitOfWork, ctx: Context) -> Written:
    """Run the command's handler; a domain error leaves the store untouched."""
    return HANDLERS[type(command)](command, uow, ctx)
