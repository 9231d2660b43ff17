"""Customer tiering: how three indicators become a score and the score a tier (pure).

A tiering run looks at the customers with orders in the policy's window (365 days by
default) and measures three indicators for each of them:

- **order volume**: revenue of the orders in the window (higher is better);
- **collection days**: the amount-weighted mean number of days from invoice to payment
  (lower is better); none when nothing was invoiced;
- **profit margin**: profit over revenue (higher is better); none when revenue is zero.

Each indicator becomes a *percentile rank* from 0 to 100 among the customers of the run,
so that money, days and ratios can be added. With n customers, a customer's rank is

    rank = 100 × (W + ½ × (E − 1)) / (n − 1)

where W counts the customers with a strictly worse value and E those with an equal value
(the customer itself included). The best customer gets 100, the worst 0, customers with
equal values share one rank (the mean of the places they occupy), and a run of one
customer gives that customer 100 (the best of one).

A customer without a value for an indicator (no invoice, or no revenue) gets rank 0 for
it and counts as worse than every customer with a value: there is nothing to judge, so
there is no credit. Those customers still count in n and in the others' W.

The score is the weighted sum of the three ranks (weights 0.4 / 0.3 / 0.3 by default),
rounded to 4 decimal places so that float noise cannot move a customer across a
threshold, and kept within 0..100. The tier is A when the score is at least the A
threshold (80), else B when at least 60, else C when at least 40, else D. Customers
without orders in the window are not graded (`NO_ORDERS_REASON`). The policy also says
how many visits a year each tier gets; every change to it is a new version.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Hashable, Mapping, Sequence, TypeVar

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.service_rules import DEFAULT_VISITS_PER_YEAR
from crm.aggregates.values import TIERS

K = TypeVar("K", bound=Hashable)

INDICATORS = ("order_volume", "collection_days", "profit_margin")
LOWER_IS_BETTER = frozenset({"collection_days"})
THRESHOLD_TIERS = ("A", "B", "C")  # D is whatever scores below the C threshold
NO_ORDERS_REASON = "no orders in window"
WEIGHT_TOLERANCE = 1e-9
MAX_WINDOW_DAYS = 3650
MAX_VISITS_PER_YEAR = 52


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_weights(weights: Mapping[str, float]) -> None:
    if set(weights) != set(INDICATORS):
        raise InvalidValueError(f"weights must name exactly {', '.join(INDICATORS)}")
    if not all(_is_number(w) and w >= 0 for w in weights.values()):
        raise InvalidValueError("weights must be non-negative numbers")
    if abs(sum(weights.values()) - 1) > WEIGHT_TOLERANCE:
        raise InvalidValueError("weights must add up to 1")


def _check_thresholds(thresholds: Mapping[str, float]) -> None:
    if set(thresholds) != set(THRESHOLD_TIERS):
        raise InvalidValueError("thresholds must name exactly A, B and C (D is the rest)")
    if not all(_is_number(t) and 0 <= t <= 100 for t in thresholds.values()):
        raise InvalidValueError("thresholds must be numbers from 0 to 100")
    if not thresholds["A"] > thresholds["B"] > thresholds["C"]:
        raise InvalidValueError("thresholds must strictly decrease from A to B to C")


def _check_visits(visits_per_year: Mapping[str, int]) -> None:
    if set(visits_per_year) != set(TIERS):
        raise InvalidValueError("visits_per_year must name every tier A-D")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_VISITS_PER_YEAR
               for v in visits_per_year.values()):
        raise InvalidValueError(f"visits_per_year must be whole numbers 0-{MAX_VISITS_PER_YEAR}")


def _check_whole(name: str, value: object, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (
            high is not None and value > high):
        raise InvalidValueError(f"{name} must be a whole number {low}-{high or 'up'}")


@dataclass(frozen=True)
class TieringPolicy:
    """Indicator weights, tier thresholds, window and visits per tier (versioned)."""

    weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(
        {"order_volume": 0.4, "collection_days": 0.3, "profit_margin": 0.3}))
    thresholds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(
        {"A": 80.0, "B": 60.0, "C": 40.0}))
    window_days: int = 365
    visits_per_year: Mapping[str, int] = field(default_factory=lambda: DEFAULT_VISITS_PER_YEAR)
    version: int = 0

    def __post_init__(self) -> None:
        _check_weights(self.weights)
        _check_thresholds(self.thresholds)
        _check_visits(self.visits_per_year)
        _check_whole("window_days", self.window_days, 1, MAX_WINDOW_DAYS)
        _check_whole("version", self.version, 0)
        for name in ("weights", "thresholds", "visits_per_year"):  # a private, read-only copy
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def visits_for(self, tier: str) -> int:
        return self.visits_per_year[tier]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (plain dicts, numbers), as stored in events."""
        stored = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: dict(v) if isinstance(v, Mapping) else v for name, v in stored.items()}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> TieringPolicy:
        """The policy `to_dict` gave; absent fields take their defaults, unknown ones fail."""
        unknown = set(stored) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidValueError(f"unknown policy fields: {', '.join(sorted(unknown))}")
        return cls(**stored)


DEFAULT_TIERING_POLICY = TieringPolicy()


def percentile_ranks(values: Mapping[K, float | Decimal | None], *,
                     lower_is_better: bool = False) -> dict[K, float]:
    """Each value's percentile rank 0-100: 100 × (W + ½(E − 1)) / (n − 1), see the module.

    W counts values strictly worse, E equal values (itself included). A single value
    ranks 100. None ranks 0 and counts as worse than every value.
    """
    return dict(zip(values, rank_column(list(values.values()), lower_is_better=lower_is_better)))


def rank_column(values: Sequence[float | Decimal | None], *, lower_is_better: bool = False) -> list[float]:
    """`percentile_ranks` for a column of values: the ranks in the same order.

    A rank depends only on how many values are below and equal to a value, so the values are
    counted once and each distinct value is ranked once, in sorted order. They are counted by
    their nearest float (hashing and sorting a million Decimals is slow) unless two different
    values of the column round to the same float; then by their exact values.
    """
    n = len(values)
    present = [v for v in values if v is not None]
    missing, count = n - len(present), len(present)
    keys, counts = _counted(present)
    rank_of: dict[Any, float] = {}
    below = 0
    for key in sorted(counts):
        equal = counts[key]  # equal values; `below` values are smaller
        worse = missing + (count - below - equal if lower_is_better else below)
        rank_of[key] = 100.0 if n == 1 else 100 * (worse + 0.5 * (equal - 1)) / (n - 1)
        below += equal
    ranks = map(rank_of.__getitem__, keys)
    return [0.0 if v is None else next(ranks) for v in values]


def _counted(present: list[Any]) -> tuple[list[Any], Counter[Any]]:
    """(a key per value that orders and equals as the values do, how often each key occurs)."""
    if all(type(v) is float for v in present):
        return present, Counter(present)
    try:
        floats = list(map(float, present))  # rounding to the nearest float never reverses an order
    except OverflowError:  # beyond any float
        return present, Counter(present)
    counts = Counter(floats)
    if len(counts) != len(set(present)):  # two different values share a float: use the values
        return present, Counter(present)
    return floats, counts


def _weighted(order_volume: float, collection_days: float, profit_margin: float, weights: tuple[float, ...]) -> float:
    """The score from the three ranks (INDICATORS order): weighted sum, 4 places, 0..100."""
    total = weights[0] * order_volume + weights[1] * collection_days + weights[2] * profit_margin
    return min(100.0, max(0.0, round(total, 4)))


def score(percentiles: Mapping[str, float],
          policy: TieringPolicy = DEFAULT_TIERING_POLICY) -> float:
    """The weighted sum of the three indicator ranks, rounded to 4 places, within 0..100."""
    if set(percentiles) != set(INDICATORS):
        raise InvalidValueError(f"percentiles must name exactly {', '.join(INDICATORS)}")
    return _weighted(*(percentiles[name] for name in INDICATORS), _weights(policy))


def _weights(policy: TieringPolicy) -> tuple[float, ...]:
    return tuple(policy.weights[name] for name in INDICATORS)


def tier_for(score: float, policy: TieringPolicy = DEFAULT_TIERING_POLICY) -> str:
    """The highest tier whose threshold the score reaches; D below the C threshold."""
    for tier in THRESHOLD_TIERS:
        if score >= policy.thresholds[tier]:
            return tier
    return "D"


@dataclass(frozen=True)
class Indicators:
    """One customer's raw indicators over the window."""

    order_volume: Decimal
    collection_days: float | None  # amount-weighted mean; None when nothing was invoiced
    profit_margin: Decimal | None  # profit / revenue; None when revenue is 0

    def __post_init__(self) -> None:
        # ranking needs an order, and NaN has none: refuse it here, not deep in a sort
        if self.order_volume is None or not all(
                _finite(v) for v in (self.order_volume, self.collection_days, self.profit_margin)):
            raise InvalidValueError("indicators must be finite numbers (order_volume required)")

    def as_dict(self) -> dict[str, Decimal | float | None]:
        # not dataclasses.asdict: its deep copy was a third of grading a million customers
        return {"order_volume": self.order_volume, "collection_days": self.collection_days,
                "profit_margin": self.profit_margin}


@dataclass(frozen=True)
class Grade:
    """A customer's tier with the reasons: score, rank per indicator, raw values."""

    tier: str
    score: float
    percentiles: dict[str, float]
    raw: dict[str, Decimal | float | None]


@dataclass(frozen=True)
class GradedColumns:
    """`grade` for columns of indicators: entry i of each list belongs to customer i."""

    tiers: list[str]
    scores: list[float]
    percentiles: dict[str, list[float]]  # per indicator name


def grade_columns(order_volume: Sequence[Decimal], collection_days: Sequence[float | None],
                  profit_margin: Sequence[Decimal | None],
                  policy: TieringPolicy = DEFAULT_TIERING_POLICY) -> GradedColumns:
    """Rank every indicator among the given customers, then score and tier each of them.

    The same as `grade`, without an object per customer (a re-tier run grades a million)."""
    columns = {"order_volume": order_volume, "collection_days": collection_days, "profit_margin": profit_margin}
    if not len(order_volume) == len(collection_days) == len(profit_margin):
        raise InvalidValueError("indicator columns must have one entry per customer")
    if any(v is None for v in order_volume) or not all(_finite(v) for column in columns.values() for v in column):
        raise InvalidValueError("indicators must be finite numbers (order_volume required)")
    ranks = {name: rank_column(column, lower_is_better=name in LOWER_IS_BETTER) for name, column in columns.items()}
    weights = _weights(policy)
    scores = [_weighted(a, b, c, weights) for a, b, c in zip(*(ranks[name] for name in INDICATORS))]
    tiers = [tier_for(s, policy) for s in scores]
    return GradedColumns(tiers, scores, ranks)


def _finite(value: Decimal | float | None) -> bool:
    return value is None or (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value))


def grade(indicators_by_customer: Mapping[K, Indicators],
          policy: TieringPolicy = DEFAULT_TIERING_POLICY) -> dict[K, Grade]:
    """Rank every indicator among the given customers, then score and tier each of them."""
    given = list(indicators_by_customer.values())
    graded = grade_columns([i.order_volume for i in given], [i.collection_days for i in given],
                           [i.profit_margin for i in given], policy)
    return {key: Grade(tier=graded.tiers[n], score=graded.scores[n],
                       percentiles={name: graded.percentiles[name][n] for name in INDICATORS},
                       raw=indicators.as_dict())
            for n, (key, indicators) in enumerate(indicators_by_customer.items())}
