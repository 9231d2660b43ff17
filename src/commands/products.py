"""Commands on products: register a SKU, change its standard cost."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from crm.aggregates.errors import RuleViolationError
from crm.aggregates.product import Product, product_id
from crm.commands.base import Command, Context, UnitOfWork, Written, written
from crm.commands.limits import Money, Name, SaneDate, ShortText

Sku = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class DuplicateSkuError(RuleViolationError):
    """A product with this SKU is already registered."""


class RegisterProduct(Command):
    """Register a product under its SKU, with standard cost and list price."""

    sku: Sku
    name: Name
    standard_cost: Money
    list_price: Money
    supplier: ShortText | None = None


class CostChange(Command):
    standard_cost: Money
    effective_from: SaneDate | None = None


class ChangeStandardCost(CostChange):
    """Set a new standard cost from a date on (today when not given)."""

    sku: Sku


def register_product(cmd: RegisterProduct, uow: UnitOfWork, ctx: Context) -> Written:
    if uow.find(Product, product_id(cmd.sku)) is not None:
        raise DuplicateSkuError(f"a product with SKU '{cmd.sku}' is already registered")
    product = Product.register(**cmd.model_dump(), occurred_at=uow.now(), actor=ctx.actor)
    return written(product, uow.save(product), sku=product.sku)


def change_standard_cost(cmd: ChangeStandardCost, uow: UnitOfWork, ctx: Context) -> Written:
    product = uow.get(Product, product_id(cmd.sku), ctx.expected_version)
    now = uow.now()
    product.change_standard_cost(standard_cost=cmd.standard_cost,
                                 effective_from=cmd.effective_from or now.date(),
                                 occurred_at=now, actor=ctx.actor)
    return written(product, uow.save(product), sku=product.sku)
