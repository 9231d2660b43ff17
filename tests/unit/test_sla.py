"""SLA clock arithmetic and policy validation (pure functions, no events)."""

from datetime import datetime, timedelta, timezone
from types import MappingProxyType

import pytest

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.sla import (
    DEFAULT_SLA_POLICY,
    Deadlines,
    SlaPolicy,
    shift_clock,
    start_clock,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def durations(**overrides: timedelta) -> dict[str, timedelta]:
    base = {"A": timedelta(days=3), "B": timedelta(days=5),
            "C": timedelta(days=7), "D": timedelta(days=10)}
    base.update(overrides)
    return base


def test_a_fresh_clock_is_due_after_the_whole_duration_and_warns_at_the_ratio():
    clock = start_clock(T0, timedelta(days=3), 0.8)

    assert clock.due_at == datetime(2026, 1, 8, 9, 0, tzinfo=timezone.utc)
    assert clock.warn_at == T0 + timedelta(days=2, hours=9, minutes=36)  # 2.4 days


def test_a_clock_with_a_half_warn_ratio_warns_half_way():
    clock = start_clock(T0, timedelta(hours=10), 0.5)

    assert clock.warn_at == T0 + timedelta(hours=5)
    assert clock.due_at == T0 + timedelta(hours=10)


def test_shifting_a_clock_moves_both_marks_by_exactly_the_pause():
    clock = start_clock(T0, timedelta(days=5), 0.8)

    shifted = shift_clock(clock, timedelta(hours=7, minutes=13, seconds=5))

    assert shifted.warn_at - clock.warn_at == timedelta(hours=7, minutes=13, seconds=5)
    assert shifted.due_at - clock.due_at == timedelta(hours=7, minutes=13, seconds=5)


def test_shifting_a_clock_by_no_time_leaves_it_unchanged():
    clock = start_clock(T0, timedelta(days=5), 0.8)

    assert shift_clock(clock, timedelta(0)) == clock


def test_a_negative_pause_does_not_move_the_clock_backwards():
    clock = Deadlines(warn_at=T0 + timedelta(days=1), due_at=T0 + timedelta(days=2))

    shifted = shift_clock(clock, timedelta(hours=-3))

    assert shifted == clock


@pytest.mark.parametrize(("tier", "days"), [("A", 3), ("B", 5), ("C", 7), ("D", 10)])
def test_the_default_policy_gives_each_tier_its_resolution_time(tier, days):
    assert DEFAULT_SLA_POLICY.duration_for(tier) == timedelta(days=days)


def test_an_unrated_customer_runs_on_the_d_tier_clock():
    assert DEFAULT_SLA_POLICY.duration_for(None) == timedelta(days=10)
    custom = SlaPolicy(durations=durations(D=timedelta(days=12)))
    assert custom.duration_for(None) == custom.duration_for("D") == timedelta(days=12)


def test_the_default_policy_warns_at_eighty_percent():
    assert DEFAULT_SLA_POLICY.warn_ratio == 0.8


def test_a_custom_policy_with_every_tier_and_a_valid_ratio_is_accepted():
    policy = SlaPolicy(durations=MappingProxyType(durations(A=timedelta(hours=4))),
                       warn_ratio=0.5, version=3)

    assert policy.duration_for("A") == timedelta(hours=4)
    assert policy.version == 3


def test_a_policy_missing_a_tier_is_refused():
    missing_c = durations()
    del missing_c["C"]

    with pytest.raises(InvalidValueError):
        SlaPolicy(durations=missing_c)


def test_a_policy_naming_an_unknown_tier_is_refused():
    with pytest.raises(InvalidValueError):
        SlaPolicy(durations={**durations(), "E": timedelta(days=20)})


@pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-1), timedelta(days=-3)])
def test_a_policy_with_a_non_positive_duration_is_refused(bad):
    with pytest.raises(InvalidValueError):
        SlaPolicy(durations=durations(B=bad))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_a_warn_ratio_outside_zero_and_one_is_refused(ratio):
    with pytest.raises(InvalidValueError):
        SlaPolicy(warn_ratio=ratio)
