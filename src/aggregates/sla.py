"""SLA clock arithmetic: when a complaint is due and when to warn (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Mapping

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.values import TIERS

UNRATED_TIER = "D"  # a customer with no tier yet gets the slowest (D) clock


@dataclass(frozen=True)
class SlaPolicy:
    """Resolution time per tier and the fraction of it after which a warning is due."""

    durations: Mapping[str, timedelta] = field(
        default_factory=lambda: MappingProxyType(
            {"A": timedelta(days=3), "B": timedelta(days=5),
             "C": timedelta(days=7), "D": timedelta(days=10)}
        )
    )
    warn_ratio: float = 0.8
    version: int = 0

    def __post_init__(self) -> None:
        if set(self.durations) != set(TIERS):
            raise InvalidValueError("SLA durations must name every tier A-D")
        if any(d <= timedelta(0) for d in self.durations.values()):
            raise InvalidValueError("SLA durations must be positive")
        if not 0 < self.warn_ratio < 1:
            raise InvalidValueError("warn_ratio must be between 0 and 1")

    def duration_for(self, tier: str | None) -> timedelta:
        return self.durations[tier or UNRATED_TIER]


DEFAULT_SLA_POLICY = SlaPolicy()


@dataclass(frozen=True)
class Deadlines:
    """The warning and due instants of one SLA clock."""

    warn_at: datetime
    due_at: datetime


def start_clock(start: datetime, duration: timedelta, warn_ratio: float) -> Deadlines:
    """A fresh clock started at `start` (filing or reopening)."""
    return Deadlines(warn_at=start + duration * warn_ratio, due_at=start + duration)


def shift_clock(deadlines: Deadlines, paused_for: timedelta) -> Deadlines:
    """Time spent awaiting the customer does not count: move both marks by the pause."""
    paused_for = max(paused_for, timedelta(0))
    return Deadlines(deadlines.warn_at + paused_for, deadlines.due_at + paused_for)
