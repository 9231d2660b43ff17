"""SLA clock arithmetic: when a complaint is due and when to warn (pure functions).

Durations are working time. With a WorkingCalendar only opening hours on working days
count; with ROUND_THE_CLOCK (None) every instant counts and the arithmetic is plain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm.aggregates.errors import InvalidValueError
from crm.aggregates.values import TIERS

UNRATED_TIER = "D"  # a customer with no tier yet gets the slowest (D) clock
ROUND_THE_CLOCK = None  # no working calendar: every instant counts
ONE_DAY, ONE_WEEK = timedelta(days=1), timedelta(days=7)


@dataclass(frozen=True)
class WorkingCalendar:
    """The time that counts on an SLA clock: opening hours on working weekdays, not holidays.

    Weekdays run 0 (Monday) to 6 (Sunday); opening hours and holidays are local to `timezone`.
    """

    weekdays: frozenset[int]
    opens: time
    closes: time
    holidays: frozenset[date] = frozenset()
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weekdays", _frozen("weekdays", self.weekdays))
        object.__setattr__(self, "holidays", _frozen("holidays", self.holidays))
        if not self.weekdays or not all(_is_weekday(day) for day in self.weekdays):
            raise InvalidValueError("weekdays must be a non-empty set of 0 (Monday) to 6 (Sunday)")
        if not all(isinstance(t, time) and t.tzinfo is None for t in (self.opens, self.closes)):
            raise InvalidValueError("opens and closes must be local times of day")
        if self.opens >= self.closes:
            raise InvalidValueError("a working day must open before it closes")
        if not all(isinstance(d, date) and not isinstance(d, datetime) for d in self.holidays):
            raise InvalidValueError("holidays must be dates")
        _zone(self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    def working_window(self, day: date) -> tuple[datetime, datetime] | None:
        """The UTC instants at which this local day opens and closes, or None if nobody works."""
        if day.weekday() not in self.weekdays or day in self.holidays:
            return None
        opens, closes = (datetime.combine(day, t, self.zone).astimezone(UTC)
                         for t in (self.opens, self.closes))
        return (opens, closes) if opens < closes else None  # a clock change can swallow it

    def plain_week_from(self, day: date) -> timedelta | None:
        """The working time of the seven days from `day`, if they hold no holiday or clock change.

        Equal UTC offsets at both ends are taken to mean no clock change: no zone changes its
        clocks twice within a week.
        """
        if any(day + timedelta(days=i) in self.holidays for i in range(7)):
            return None
        if self._midnight(day).utcoffset() != self._midnight(day + ONE_WEEK).utcoffset():
            return None
        opens, closes = (datetime.combine(day, t) for t in (self.opens, self.closes))
        return (closes - opens) * len(self.weekdays)

    def _midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(0), self.zone)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form that from_dict reads back."""
        return {"weekdays": sorted(self.weekdays), "opens": self.opens.isoformat(),
                "closes": self.closes.isoformat(),
                "holidays": [day.isoformat() for day in sorted(self.holidays)],
                "timezone": self.timezone}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> WorkingCalendar:
        """The calendar to_dict wrote (holidays and timezone may be left out)."""
        _refuse_unknown_keys("calendar", raw, {"weekdays", "opens", "closes", "holidays", "timezone"})
        if not {"weekdays", "opens", "closes"} <= raw.keys():
            raise InvalidValueError("a calendar needs weekdays, opens and closes")
        try:
            return cls(weekdays=_frozen("weekdays", raw["weekdays"]),
                       opens=time.fromisoformat(raw["opens"]), closes=time.fromisoformat(raw["closes"]),
                       holidays=frozenset(date.fromisoformat(d) for d in raw.get("holidays", ())),
                       timezone=raw.get("timezone", "UTC"))
        except (TypeError, ValueError) as error:
            raise InvalidValueError(f"malformed calendar: {error}") from None


@dataclass(frozen=True)
class SlaPolicy:
    """Resolution time per tier, the fraction of it after which to warn, and what time counts."""

    durations: Mapping[str, timedelta] = field(
        default_factory=lambda: MappingProxyType(
            {"A": timedelta(days=3), "B": timedelta(days=5),
             "C": timedelta(days=7), "D": timedelta(days=10)}
        )
    )
    warn_ratio: float = 0.8
    version: int = 0
    calendar: WorkingCalendar | None = ROUND_THE_CLOCK

    def __post_init__(self) -> None:
        if set(self.durations) != set(TIERS):
            raise InvalidValueError("SLA durations must name every tier A-D")
        if any(d <= timedelta(0) for d in self.durations.values()):
            raise InvalidValueError("SLA durations must be positive")
        if not 0 < self.warn_ratio < 1:
            raise InvalidValueError("warn_ratio must be between 0 and 1")
        if self.calendar is not None and not isinstance(self.calendar, WorkingCalendar):
            raise InvalidValueError("calendar must be a WorkingCalendar or None (round the clock)")

    def duration_for(self, tier: str | None) -> timedelta:
        return self.durations[tier or UNRATED_TIER]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form: ISO 8601 durations and the calendar as a dict (or None)."""
        return {"version": self.version, "warn_ratio": self.warn_ratio,
                "durations": {tier: format_iso_duration(self.durations[tier]) for tier in TIERS},
                "calendar": None if self.calendar is None else self.calendar.to_dict()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SlaPolicy:
        """The policy to_dict wrote; a field left out takes its default."""
        _refuse_unknown_keys("SLA policy", raw, {"version", "warn_ratio", "durations", "calendar"})
        fields: dict[str, Any] = {}
        if "durations" in raw:
            if not isinstance(raw["durations"], Mapping):
                raise InvalidValueError("durations must map each tier to an ISO 8601 duration")
            fields["durations"] = MappingProxyType(
                {tier: parse_iso_duration(text) for tier, text in raw["durations"].items()})
        if "warn_ratio" in raw:
            fields["warn_ratio"] = _number("warn_ratio", raw["warn_ratio"], (int, float))
        if "version" in raw:
            fields["version"] = _number("version", raw["version"], (int,))
        if raw.get("calendar") is not None:
            fields["calendar"] = WorkingCalendar.from_dict(raw["calendar"])
        return cls(**fields)


DEFAULT_SLA_POLICY = SlaPolicy()


@dataclass(frozen=True)
class Deadlines:
    """The warning and due instants of one SLA clock."""

    warn_at: datetime
    due_at: datetime


def start_clock(start: datetime, duration: timedelta, warn_ratio: float,
                calendar: WorkingCalendar | None = ROUND_THE_CLOCK) -> Deadlines:
    """A fresh clock started at `start` (filing or reopening); `duration` is working time."""
    return Deadlines(warn_at=add_working_time(start, duration * warn_ratio, calendar),
                     due_at=add_working_time(start, duration, calendar))


def shift_clock(deadlines: Deadlines, paused_for: timedelta) -> Deadlines:
    """Time spent awaiting the customer does not count: move both marks by the pause."""
    paused_for = max(paused_for, timedelta(0))
    return Deadlines(deadlines.warn_at + paused_for, deadlines.due_at + paused_for)


def shift_clock_for_pause(deadlines: Deadlines, paused_from: datetime, paused_until: datetime,
                          calendar: WorkingCalendar | None) -> Deadlines:
    """Move both marks on by the working time the pause took; closed hours were never on the clock."""
    paused = working_time_between(paused_from, paused_until, calendar)
    return Deadlines(warn_at=add_working_time(deadlines.warn_at, paused, calendar),
                     due_at=add_working_time(deadlines.due_at, paused, calendar))


def add_working_time(start: datetime, duration: timedelta,
                     calendar: WorkingCalendar | None) -> datetime:
    """The earliest instant by which `duration` of working time has passed since `start` (UTC).

    A clock started outside working time starts at the next opening; a duration that runs
    out exactly at closing time is due at closing time.
    """
    if duration < timedelta(0):
        raise InvalidValueError("a duration of working time cannot be negative")
    if calendar is None:
        return start + duration
    start, remaining = _utc(start), duration
    if not remaining:
        return start
    day = start.astimezone(calendar.zone).date()
    while True:
        window = calendar.working_window(day)
        if window and window[1] > start:
            begin = max(window[0], start)
            if remaining <= window[1] - begin:
                return begin + remaining
            remaining -= window[1] - begin
        day += ONE_DAY
        while (week := calendar.plain_week_from(day)) is not None and remaining > week:
            remaining, day = remaining - week, day + ONE_WEEK


def working_time_between(start: datetime, end: datetime,
                         calendar: WorkingCalendar | None) -> timedelta:
    """The working time in [start, end); nothing when end is not after start."""
    if calendar is None:
        return max(end - start, timedelta(0))
    start, end = _utc(start), _utc(end)
    day, last_day = (moment.astimezone(calendar.zone).date() for moment in (start, end))
    total = timedelta(0)
    while day <= last_day:
        window = calendar.working_window(day)
        if window:
            total += max(min(window[1], end) - max(window[0], start), timedelta(0))
        day += ONE_DAY
        while day + ONE_WEEK <= last_day and (week := calendar.plain_week_from(day)) is not None:
            total, day = total + week, day + ONE_WEEK
    return total


_ISO_DURATION = re.compile(
    r"P(?:([0-9]+)D)?(?:T(?=[0-9])(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+)(?:\.([0-9]{1,6}))?S)?)?")


def parse_iso_duration(text: str) -> timedelta:
    """A duration written as ISO 8601 PnDTnHnMnS (days, hours, minutes, seconds; no more)."""
    match = _ISO_DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or not any(match.groups()):
        raise InvalidValueError(f"not an ISO 8601 duration of the form PnDTnHnMnS: {text!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    try:
        return timedelta(days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0),
                         seconds=int(seconds or 0), microseconds=int((fraction or "").ljust(6, "0")))
    except (OverflowError, ValueError):
        raise InvalidValueError(f"duration out of range: {text!r}") from None


def format_iso_duration(duration: timedelta) -> str:
    """The ISO 8601 form (PnDTnHnMnS) of a duration that is not negative."""
    if duration < timedelta(0):
        raise InvalidValueError("a negative duration has no ISO 8601 form here")
    hours, rest = divmod(duration.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    second_text = f"{seconds}.{duration.microseconds:06d}".rstrip("0") if duration.microseconds else f"{seconds}"
    time_part = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (
        f"{second_text}S" if seconds or duration.microseconds else "")
    date_part = f"{duration.days}D" if duration.days else ""
    if not date_part and not time_part:
        return "PT0S"
    return f"P{date_part}" + (f"T{time_part}" if time_part else "")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidValueError("SLA instants must be timezone-aware")
    return moment.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    if not isinstance(name, str):
        raise InvalidValueError("timezone must be an IANA name such as 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidValueError(f"unknown timezone: {name!r}") from None


def _frozen(name: str, items: Any) -> frozenset[Any]:
    try:
        return frozenset(items)
    except TypeError:
        raise InvalidValueError(f"{name} must be a collection") from None


def _is_weekday(day: Any) -> bool:
    return isinstance(day, int) and not isinstance(day, bool) and 0 <= day <= 6


def _number(name: str, value: Any, kinds: tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidValueError(f"{name} must be a number")
    return value


def _refuse_unknown_keys(what: str, raw: Any, known: set[str]) -> None:
    if not isinstance(raw, Mapping):
        raise InvalidValueError(f"{what} must be an object")
    if unknown := set(raw) - known:
        raise InvalidValueError(f"unknown {what} fields: {sorted(map(str, unknown))}")
