"""Commands on customers: register, update, visits, tier overrides, lifecycle."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import EmailStr, Field, StringConstraints

from crm.aggregates.customer import Customer
from crm.commands.base import Command, Context, UnitOfWork, Written, past_date, written
from crm.commands.limits import AnniversaryDate, Area, Label, Name, Note, OptionalReason, Phone, Reason, SaneDate
from crm.commands.limits import ShortText as Short


class SpecialDay(Command):
    """A date worth remembering each year (anniversary, founding day)."""

    label: Label
    date: AnniversaryDate


class ProfileFields(Command):
    """Profile fields; on PATCH, only those sent are changed."""

    name: Name | None = None
    email: EmailStr | None = None
    phone: Phone | None = None
    industry: Area | None = None
    region: Area | None = None
    birthday: SaneDate | None = None
    special_days: Annotated[list[SpecialDay], Field(max_length=20)] | None = None
    owner: Short | None = None

    def as_profile(self, only_sent: bool) -> dict:
        fields = self.model_dump(exclude_unset=only_sent)
        if fields.get("special_days") is None and not only_sent:
            fields["special_days"] = []
        return fields


class RegisterCustomer(ProfileFields):
    """Register a new customer."""

    name: Name


class UpdateProfile(ProfileFields):
    """Change some of a customer's profile fields."""

    customer_id: UUID


class VisitDetails(Command):
    visited_on: SaneDate
    by: Name
    notes: Note | None = None


class RecordVisit(VisitDetails):
    """Record a visit to a customer."""

    customer_id: UUID


class OverrideDetails(Command):
    tier: Annotated[str, StringConstraints(pattern=r"^[ABCD]$")]
    reason: Reason
    approved_by: Name
    expires_on: SaneDate | None = None


class OverrideTier(OverrideDetails):
    """Set a customer's tier by hand, with a reason and an approver."""

    customer_id: UUID


class DeactivationDetails(Command):
    reason: OptionalReason | None = None


class DeactivateCustomer(DeactivationDetails):
    """Stop serving a customer: no orders or visits until reactivated."""

    customer_id: UUID


class ReactivateCustomer(Command):
    """Serve a deactivated customer again."""

    customer_id: UUID


class ErasureDetails(Command):
    reason: Reason


class ErasePersonalData(ErasureDetails):
    """GDPR erasure: the customer's personal data becomes unreadable for good; business facts stay."""

    customer_id: UUID


def register_customer(cmd: RegisterCustomer, uow: UnitOfWork, ctx: Context) -> Written:
    customer = Customer.register(occurred_at=uow.now(), actor=ctx.actor, **cmd.as_profile(False))
    return written(customer, uow.save(customer))


def update_profile(cmd: UpdateProfile, uow: UnitOfWork, ctx: Context) -> Written:
    customer = uow.get(Customer, cmd.customer_id, ctx.expected_version)
    changes = cmd.model_dump(exclude_unset=True, exclude={"customer_id"})
    customer.update_profile(changes, occurred_at=uow.now(), actor=ctx.actor)
    return written(customer, uow.save(customer))


def record_visit(cmd: RecordVisit, uow: UnitOfWork, ctx: Context) -> Written:
    customer = uow.get(Customer, cmd.customer_id, ctx.expected_version)
    customer.record_visit(visited_on=past_date(uow, cmd.visited_on, "visited_on"), by=cmd.by,
                          notes=cmd.notes, occurred_at=uow.now(), actor=ctx.actor)
    return written(customer, uow.save(customer))


def override_tier(cmd: OverrideTier, uow: UnitOfWork, ctx: Context) -> Written:
    customer = uow.get(Customer, cmd.customer_id, ctx.expected_version)
    customer.override_tier(tier=cmd.tier, reason=cmd.reason, approved_by=cmd.approved_by,
                           expires_on=cmd.expires_on, occurred_at=uow.now(), actor=ctx.actor)
    return written(customer, uow.save(customer))


def deactivate_customer(cmd: DeactivateCustomer, uow: UnitOfWork, ctx: Context) -> Written:
    customer = uow.get(Customer, cmd.customer_id, ctx.expected_version)
    customer.deactivate(reason=cmd.reason, occurred_at=uow.now(), actor=ctx.actor)
    return written(customer, uow.save(customer))


def reactivate_customer(cmd: ReactivateCustomer, uow: UnitOfWork, ctx: Context) -> Written:
    customer = uow.get(Customer, cmd.customer_id, ctx.expected_version)
    customer.reactivate(occurred_at=uow.now(), actor=ctx.actor)
    return written(customer, uow.save(customer))


def erase_personal_data(cmd: ErasePersonalData, uow: UnitOfWork, ctx: Context) -> Written:
    """Record PersonalDataErased, then destroy the customer's key. A repeat after a crash between the
    two (the customer already erased) destroys the key again, idempotently, before refusing."""
    customer = uow.get(Customer, cmd.customer_id, ctx.expected_version)
    if customer.erased:
        uow.shred_personal_data(customer.id)
    customer.erase_personal_data(reason=cmd.reason, occurred_at=uow.now(), actor=ctx.actor)
    result = written(customer, uow.save(customer))
    uow.shred_personal_data(customer.id)
    return result
