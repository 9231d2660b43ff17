"""The shape money takes in commands: Decimal, never float, bounded in size and precision
(the bounds and why: crm.commands.limits)."""

from crm.commands.limits import MAX_MONEY, Money, PositiveMoney

__all__ = ["MAX_MONEY", "Money", "PositiveMoney"]
