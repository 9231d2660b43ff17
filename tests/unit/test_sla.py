"""SLA clock arithmetic, working calendars and policy validation (pure functions, no events)."""

import json
from datetime import date, datetime, time, timedelta, timezone
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.sla import (
    DEFAULT_SLA_POLICY,
    ROUND_THE_CLOCK,
    Deadlines,
    SlaPolicy,
    WorkingCalendar,
    add_working_time,
    format_iso_duration,
    parse_iso_duration,
    shift_clock,
    shift_clock_for_pause,
    start_clock,
    working_time_between,
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


# --- Working calendars: only opening hours on working days count ---------------------------

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = WorkingCalendar(weekdays=frozenset(range(5)), opens=time(9), closes=time(17))
BERLIN_OFFICE = WorkingCalendar(weekdays=frozenset(range(5)), opens=time(9), closes=time(17),
                                timezone="Europe/Berlin")
FRIDAY_4PM = datetime(2026, 1, 9, 16, 0, tzinfo=UTC)  # one working hour before the weekend


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def at(day: int, hour: int, minute: int = 0, month: int = 1, tz=UTC) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=tz)


def test_round_the_clock_is_plain_arithmetic():
    assert ROUND_THE_CLOCK is None
    assert add_working_time(FRIDAY_4PM, hours(30), ROUND_THE_CLOCK) == FRIDAY_4PM + hours(30)
    assert working_time_between(FRIDAY_4PM, FRIDAY_4PM + hours(30), None) == hours(30)


@pytest.mark.parametrize(("duration", "due"), [
    (hours(1), at(9, 17)),        # runs out exactly at Friday's closing
    (hours(8), at(12, 16)),       # 1 h Friday + 7 h Monday
    (hours(16), at(13, 16)),      # 1 h Friday + 8 h Monday + 7 h Tuesday
    (hours(41), at(16, 17)),      # 1 h + a whole working week
])
def test_a_complaint_filed_late_on_friday_is_due_after_the_weekend(duration, due):
    assert add_working_time(FRIDAY_4PM, duration, OFFICE) == due


def test_a_clock_that_runs_out_at_closing_time_is_due_at_closing_not_next_morning():
    assert add_working_time(at(5, 9), hours(8), OFFICE) == at(5, 17)


def test_the_warning_at_eighty_percent_lands_in_working_hours():
    clock = start_clock(FRIDAY_4PM, hours(8), 0.8, OFFICE)

    assert clock.warn_at == at(12, 14, 24)  # 6 h 24 min of work: 1 h Friday, 5 h 24 min Monday
    assert clock.due_at == at(12, 16)


@pytest.mark.parametrize(("start", "due"), [
    (at(10, 10), at(12, 11)),     # Saturday: the clock starts Monday 09:00
    (at(12, 7), at(12, 11)),      # Monday before opening
    (at(12, 18), at(13, 11)),     # Monday after closing
    (at(9, 17), at(12, 11)),      # Friday at closing time
])
def test_a_clock_started_outside_working_hours_starts_at_the_next_opening(start, due):
    assert add_working_time(start, hours(2), OFFICE) == due


def test_holidays_do_not_count():
    with_holiday = WorkingCalendar(weekdays=frozenset(range(5)), opens=time(9), closes=time(17),
                                   holidays=frozenset({date(2026, 1, 12)}))

    assert add_working_time(FRIDAY_4PM, hours(8), with_holiday) == at(13, 16)
    assert working_time_between(at(12, 0), at(13, 0), with_holiday) == timedelta(0)


def test_the_working_day_stays_nine_to_five_local_across_the_spring_clock_change():
    friday = datetime(2026, 3, 27, 16, 0, tzinfo=BERLIN)  # CET, 15:00 UTC

    due = add_working_time(friday, hours(2), BERLIN_OFFICE)

    assert due == datetime(2026, 3, 30, 10, 0, tzinfo=BERLIN)  # CEST
    assert due == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)


def test_the_working_day_stays_nine_to_five_local_across_the_autumn_clock_change():
    friday = datetime(2026, 10, 23, 16, 0, tzinfo=BERLIN)  # CEST

    assert add_working_time(friday, hours(2), BERLIN_OFFICE) == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(("sunday", "worked"), [(date(2026, 3, 29), hours(3)),
                                                (date(2026, 10, 25), hours(5))])
def test_a_shift_spanning_the_clock_change_counts_the_hours_really_worked(sunday, worked):
    night_shift = WorkingCalendar(weekdays=frozenset({6}), opens=time(1), closes=time(5),
                                  timezone="Europe/Berlin")
    day_start = datetime.combine(sunday, time(0), BERLIN)

    assert working_time_between(day_start, day_start + hours(24), night_shift) == worked


def test_a_shift_inside_the_hour_the_spring_clock_change_skips_counts_nothing():
    skipped_hour = WorkingCalendar(weekdays=frozenset({6}), opens=time(2, 30), closes=time(3),
                                   timezone="Europe/Berlin")
    day_start = datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN)

    assert working_time_between(day_start, day_start + hours(24), skipped_hour) == timedelta(0)


def test_a_working_week_holds_forty_hours_and_a_weekend_none():
    assert working_time_between(at(5, 0), at(12, 0), OFFICE) == hours(40)
    assert working_time_between(at(9, 17), at(12, 9), OFFICE) == timedelta(0)


def test_a_pause_entirely_outside_working_hours_shifts_nothing():
    clock = start_clock(FRIDAY_4PM, hours(16), 0.8, OFFICE)

    assert shift_clock_for_pause(clock, at(9, 17, 30), at(12, 8, 45), OFFICE) == clock


def test_a_pause_moves_both_marks_by_the_working_time_it_took():
    clock = start_clock(at(12, 9), hours(16), 0.5, OFFICE)  # warns Mon 17:00, due Tue 17:00

    shifted = shift_clock_for_pause(clock, at(12, 15), at(13, 11), OFFICE)  # 2 h + 2 h of work

    assert shifted == Deadlines(warn_at=at(13, 13), due_at=at(14, 13))


def test_a_pause_round_the_clock_is_the_plain_shift():
    clock = start_clock(T0, timedelta(days=5), 0.8)

    assert shift_clock_for_pause(clock, T0, T0 + hours(7), None) == shift_clock(clock, hours(7))
    assert shift_clock_for_pause(clock, T0, T0 - hours(7), None) == clock


def test_no_working_time_leaves_the_instant_where_it_is():
    assert add_working_time(at(10, 12), timedelta(0), OFFICE) == at(10, 12)


def test_a_negative_duration_of_working_time_is_refused():
    with pytest.raises(InvalidValueError):
        add_working_time(T0, hours(-1), OFFICE)


def test_a_naive_instant_is_refused_when_a_calendar_applies():
    with pytest.raises(InvalidValueError):
        add_working_time(datetime(2026, 1, 5, 9), hours(1), OFFICE)


def test_a_clock_of_four_hundred_working_days_is_computed_without_stepping_minutes():
    berlin_holidays = WorkingCalendar(
        weekdays=frozenset(range(5)), opens=time(9), closes=time(17), timezone="Europe/Berlin",
        holidays=frozenset(date(year, month, day) for year in range(2026, 2031)
                           for month, day in ((1, 1), (5, 1), (10, 3), (12, 25), (12, 26))))
    duration = timedelta(days=400)  # 1200 working days of eight hours

    due = add_working_time(T0, duration, berlin_holidays)

    assert working_time_between(T0, due, berlin_holidays) == duration
    assert due == reference_add(T0, duration, berlin_holidays)


@pytest.mark.parametrize("calendar", [
    {"weekdays": frozenset()},
    {"weekdays": frozenset({7})},
    {"weekdays": frozenset({True})},
    {"opens": time(17)},
    {"opens": time(18)},
    {"timezone": "Mars/Olympus"},
    {"timezone": "../etc/passwd"},
    {"timezone": ""},
    {"holidays": frozenset({datetime(2026, 1, 1)})},
    {"closes": time(17, tzinfo=UTC)},
])
def test_a_malformed_calendar_is_refused(calendar):
    with pytest.raises(InvalidValueError):
        WorkingCalendar(**{"weekdays": frozenset(range(5)), "opens": time(9), "closes": time(17),
                           **calendar})


# --- Properties, checked against a day-by-day reference --------------------------------------

def reference_windows(start: datetime, calendar: WorkingCalendar):
    day = start.astimezone(calendar.zone).date()
    while True:
        if window := calendar.working_window(day):
            yield window
        day += timedelta(days=1)


def reference_add(start: datetime, duration: timedelta, calendar: WorkingCalendar) -> datetime:
    remaining = duration
    if not remaining:
        return start
    for opens, closes in reference_windows(start, calendar):
        begin = max(opens, start)
        if begin < closes:
            if remaining <= closes - begin:
                return begin + remaining
            remaining -= closes - begin


def reference_between(start: datetime, end: datetime, calendar: WorkingCalendar) -> timedelta:
    total = timedelta(0)
    for opens, closes in reference_windows(start, calendar):
        if opens >= end:
            return total
        total += max(min(closes, end) - max(opens, start), timedelta(0))


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "America/Santiago"]


@st.composite
def calendars(draw) -> WorkingCalendar:
    opens = draw(st.times(max_value=time(22, 59)))
    closes = draw(st.times(min_value=(datetime.combine(date.min, opens) + hours(1)).time()))
    return WorkingCalendar(
        weekdays=draw(st.frozensets(st.integers(0, 6), min_size=1)), opens=opens, closes=closes,
        holidays=draw(st.frozensets(st.dates(date(2025, 1, 1), date(2027, 12, 31)), max_size=30)),
        timezone=draw(st.sampled_from(ZONES)))


instants = st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC))
working_durations = st.timedeltas(timedelta(0), hours(200))


@given(instants, st.timedeltas(timedelta(days=-30), timedelta(days=30)))
def test_round_the_clock_always_matches_plain_arithmetic(start, duration):
    if duration >= timedelta(0):
        assert add_working_time(start, duration, None) == start + duration
    assert working_time_between(start, start + duration, None) == max(duration, timedelta(0))


@settings(deadline=None)
@given(calendars(), instants, working_durations, working_durations)
def test_more_working_time_never_ends_sooner(calendar, start, shorter, longer):
    shorter, longer = sorted((shorter, longer))

    assert start <= add_working_time(start, shorter, calendar) <= add_working_time(start, longer, calendar)


@settings(deadline=None)
@given(calendars(), instants, working_durations)
def test_the_working_time_up_to_the_due_instant_is_the_duration(calendar, start, duration):
    due = add_working_time(start, duration, calendar)

    assert due >= start
    assert working_time_between(start, due, calendar) == duration


@settings(deadline=None)
@given(calendars(), instants, working_durations)
def test_skipping_whole_weeks_agrees_with_stepping_day_by_day(calendar, start, duration):
    due = add_working_time(start, duration, calendar)

    assert due == reference_add(start, duration, calendar)
    assert working_time_between(start, due + hours(30), calendar) == reference_between(
        start, due + hours(30), calendar)


@settings(deadline=None)
@given(calendars(), instants, working_durations, working_durations)
def test_working_time_adds_up(calendar, start, first, second):
    via_first = add_working_time(add_working_time(start, first, calendar), second, calendar)

    assert via_first == add_working_time(start, first + second, calendar)


# --- ISO 8601 durations and the policy's JSON form ------------------------------------------

@pytest.mark.parametrize(("text", "duration"), [
    ("P3D", timedelta(days=3)), ("PT36H", hours(36)), ("PT90M", timedelta(minutes=90)),
    ("P1DT2H3M4S", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("PT0.25S", timedelta(milliseconds=250)), ("PT0S", timedelta(0)),
])
def test_iso_durations_of_days_hours_minutes_and_seconds_are_read(text, duration):
    assert parse_iso_duration(text) == duration


@pytest.mark.parametrize(("duration", "text"), [
    (timedelta(days=3), "P3D"), (hours(36), "P1DT12H"), (timedelta(0), "PT0S"),
    (timedelta(minutes=5, seconds=1, microseconds=500), "PT5M1.0005S"),
])
def test_durations_are_written_in_iso_form(duration, text):
    assert format_iso_duration(duration) == text


@pytest.mark.parametrize("bad", [
    "", "P", "PT", "3D", "P1Y", "P1M", "P2W", "-P1D", "P1.5D", "PT1.5H", "p1d", " P1D", "P1D ",
    "P1DT", "P1D1H", "PT1S2M", "PT0.1234567S", "P\u0663D", "P" + "9" * 12 + "D", None, 3,
])
def test_anything_but_days_hours_minutes_and_seconds_is_refused(bad):
    with pytest.raises(InvalidValueError):
        parse_iso_duration(bad)


def test_a_negative_duration_has_no_iso_form():
    with pytest.raises(InvalidValueError):
        format_iso_duration(timedelta(seconds=-1))


@given(st.timedeltas(min_value=timedelta(0)))
def test_iso_durations_round_trip(duration):
    assert parse_iso_duration(format_iso_duration(duration)) == duration


def test_the_default_policy_runs_round_the_clock_and_reads_as_json():
    assert DEFAULT_SLA_POLICY.calendar is None
    assert DEFAULT_SLA_POLICY.to_dict() == {
        "version": 0, "warn_ratio": 0.8, "calendar": None,
        "durations": {"A": "P3D", "B": "P5D", "C": "P7D", "D": "P10D"}}


def test_a_policy_with_a_calendar_survives_json():
    policy = SlaPolicy(durations=durations(A=hours(8), B=hours(16)), warn_ratio=0.75, version=4,
                       calendar=WorkingCalendar(weekdays=frozenset({0, 2, 4}), opens=time(8, 30),
                                                closes=time(16, 45), timezone="Europe/Berlin",
                                                holidays=frozenset({date(2026, 12, 25)})))

    restored = SlaPolicy.from_dict(json.loads(json.dumps(policy.to_dict())))

    assert restored == policy
    assert restored.to_dict()["calendar"]["holidays"] == ["2026-12-25"]


def test_a_policy_read_from_an_empty_object_is_the_default():
    assert SlaPolicy.from_dict({}) == DEFAULT_SLA_POLICY


@given(st.fixed_dictionaries({tier: st.timedeltas(timedelta(seconds=1), timedelta(days=90))
                              for tier in "ABCD"}),
       st.floats(0.01, 0.99), st.integers(0, 1000), st.none() | calendars())
def test_any_policy_round_trips_through_its_json_form(tier_durations, ratio, version, calendar):
    policy = SlaPolicy(durations=tier_durations, warn_ratio=ratio, version=version, calendar=calendar)

    assert SlaPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy


@pytest.mark.parametrize("raw", [
    [],
    {"durations": {"A": "P3D", "B": "P5D", "C": "P7D", "D": "10 days"}},
    {"durations": {"A": "P3D", "B": "P5D", "C": "P7D"}},
    {"durations": "P3D"},
    {"warn_ratio": "0.8"},
    {"warn_ratio": True},
    {"version": 1.5},
    {"deadline": "P3D"},
    {"calendar": {"weekdays": [0, 1], "opens": "09:00"}},
    {"calendar": {"weekdays": [0, 1], "opens": "9 am", "closes": "17:00"}},
    {"calendar": {"weekdays": [0, 1], "opens": "09:00", "closes": "17:00", "holidays": ["soon"]}},
    {"calendar": {"weekdays": [0, 1], "opens": "09:00", "closes": "17:00", "tz": "UTC"}},
    {"calendar": "weekdays"},
])
def test_a_malformed_policy_is_refused(raw):
    with pytest.raises(InvalidValueError):
        SlaPolicy.from_dict(raw)
