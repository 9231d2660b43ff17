"""Commands on complaints: filing (which fixes the SLA clock) and every later step."""

from __future__ import annotations

from typing import Annotated, Any, Callable
from uuid import UUID

from pydantic import Field

from crm.aggregates.complaint import Complaint
from crm.aggregates.customer import Customer
from crm.aggregates.order import Order
from crm.aggregates.product import Product, product_id
from crm.commands.base import (Command, Context, UnitOfWork, UnknownReferenceError, Written,
                               business_time, check_version, written)
from crm.commands.limits import (Channel, Comment, Label, LongText as Text, Name as Who, OptionalReason as Reason,
                                 RequiredComment, SaneInstant)
from crm.commands.products import Sku


class FileComplaint(Command):
    """File a complaint; the customer's tier at this moment sets its SLA deadlines."""

    customer_id: UUID
    category: Label
    description: Text
    order_id: UUID | None = None
    sku: Sku | None = None
    channel: Channel | None = None
    filed_at: SaneInstant | None = None


class AssignDetails(Command):
    assignee: Who


class NoteDetails(Command):
    text: Text
    by: Who


class ReasonDetails(Command):
    reason: Reason | None = None


class ResolveDetails(Command):
    resolution: Text
    root_cause: Comment | None = None
    by: Who


class ConfirmDetails(Command):
    by: Who


class RateDetails(Command):
    score: Annotated[int, Field(ge=1, le=5, strict=True)]
    comment: Comment | None = None


class ReopenDetails(Command):
    reason: RequiredComment


class NoDetails(Command):
    pass


class ComplaintStep(Command):
    """One step on an existing complaint: which complaint, which step, with what details."""

    complaint_id: UUID
    step: str
    details: dict[str, Any] = {}


# step name (the URL segment) -> (body model, how to apply it to the complaint)
STEPS: dict[str, tuple[type[Command], Callable[..., None]]] = {
    "assign": (AssignDetails, Complaint.assign),
    "notes": (NoteDetails, Complaint.add_note),
    "escalate": (ReasonDetails, Complaint.escalate),
    "await-customer": (ReasonDetails, Complaint.await_customer),
    "resume": (NoDetails, Complaint.resume),
    "resolve": (ResolveDetails, Complaint.resolve),
    "confirm": (ConfirmDetails, Complaint.confirm_resolution),
    "rate": (RateDetails, Complaint.rate),
    "reopen": (ReopenDetails, Complaint.reopen),
    "close": (ReasonDetails, Complaint.close),
}


def file_complaint(cmd: FileComplaint, uow: UnitOfWork, ctx: Context) -> Written:
    customer = uow.find(Customer, cmd.customer_id)
    if customer is None:
        raise UnknownReferenceError(f"customer {cmd.customer_id} does not exist")
    ctx.ensure_scope(customer.id)
    _check_references(cmd, uow)
    filed_at = business_time(uow, cmd.filed_at, "filed_at")
    complaint = Complaint.file(customer_id=customer.id, tier=customer.tier_at(filed_at),
                               category=cmd.category, description=cmd.description, order_id=cmd.order_id,
                               sku=cmd.sku, channel=cmd.channel, policy=uow.sla_policy(),
                               occurred_at=filed_at, actor=ctx.actor)
    return written(complaint, uow.save(complaint), tier=complaint.tier,
                   due_at=complaint.deadlines.due_at, warn_at=complaint.deadlines.warn_at)


def _check_references(cmd: FileComplaint, uow: UnitOfWork) -> None:
    if cmd.order_id is not None:
        order = uow.find(Order, cmd.order_id)
        if order is None or order.customer_id != cmd.customer_id:
            raise UnknownReferenceError(f"order {cmd.order_id} is not an order of this customer")
    if cmd.sku is not None and uow.find(Product, product_id(cmd.sku)) is None:
        raise UnknownReferenceError(f"unknown sku '{cmd.sku}'")


def take_complaint_step(cmd: ComplaintStep, uow: UnitOfWork, ctx: Context) -> Written:
    model, apply = STEPS[cmd.step]
    details = model.model_validate(cmd.details).model_dump()
    complaint = uow.get(Complaint, cmd.complaint_id)
    ctx.ensure_scope(complaint.customer_id)  # before the version: a stranger learns nothing of it
    check_version(complaint, ctx.expected_version)
    apply(complaint, **details, occurred_at=uow.now(), actor=ctx.actor)
    return written(complaint, uow.save(complaint), status=complaint.status)
