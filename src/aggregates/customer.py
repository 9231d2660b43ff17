"""The Customer aggregate: profile, visits, tier and tier overrides, lifecycle."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from eventsourcing.domain import Aggregate, event
from eventsourcing.domain import Snapshot as LibrarySnapshot

from crm.aggregates.errors import InvalidValueError, RuleViolationError
from crm.aggregates.values import optional_text, require_email, require_text, require_tier

PROFILE_FIELDS = ("name", "email", "phone", "industry", "region", "birthday", "special_days", "owner")
MAX_SPECIAL_DAYS = 20


class CustomerInactiveError(RuleViolationError):
    """The customer is deactivated."""


class CustomerErasedError(RuleViolationError):
    """The customer's personal data was erased; the profile can no longer change."""


def _special_days(days: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    days = days or []
    if len(days) > MAX_SPECIAL_DAYS:
        raise InvalidValueError(f"at most {MAX_SPECIAL_DAYS} special days")
    checked = []
    for day in days:
        if not isinstance(day.get("date"), date):
            raise InvalidValueError("special_days[].date must be a date")
        checked.append({"label": require_text("special_days[].label", day.get("label"), max_len=100),
                        "date": day["date"]})
    return checked


def _birthday(value: object) -> date | None:
    if value is not None and (not isinstance(value, date) or isinstance(value, datetime)):
        raise InvalidValueError("birthday must be a calendar date")
    return value  # type: ignore[return-value]


def check_profile(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise the given profile fields (only those present)."""
    unknown = set(fields) - set(PROFILE_FIELDS)
    if unknown:
        raise InvalidValueError(f"unknown profile fields: {', '.join(sorted(unknown))}")
    checks = {
        "name": lambda v: require_text("name", v, max_len=200),
        "email": require_email,
        "phone": lambda v: optional_text("phone", v, max_len=40),
        "industry": lambda v: optional_text("industry", v, max_len=100),
        "region": lambda v: optional_text("region", v, max_len=100),
        "owner": lambda v: optional_text("owner", v, max_len=200),
        "birthday": _birthday,
        "special_days": _special_days,
    }
    return {name: checks[name](value) for name, value in fields.items()}


class Customer(Aggregate):
    """A customer relationship: who they are, how we serve them, which tier they hold."""

    class Snapshot(LibrarySnapshot):
        """The customer's state at a version, so a long history is not replayed for every command
        (the store takes one every SNAPSHOT_INTERVAL events). Its personal fields are sealed under
        the customer's key like the events' (crm.infra.personal_data). JSON has no tuples: the
        tier log's entries come back as the tuples the events make."""

        def mutate(self, _: None) -> Customer:
            customer = super().mutate(_)
            customer.tier_log = [tuple(entry) for entry in customer.tier_log]
            return customer  # type: ignore[return-value]

    @classmethod
    def register(cls, *, occurred_at: datetime, actor: str, **profile: Any) -> Customer:
        checked = check_profile({**{f: None for f in PROFILE_FIELDS}, **profile})
        return cls(occurred_at=occurred_at, actor=actor, **checked)

    @event("Registered")
    def __init__(self, *, name: str, email: str | None, phone: str | None, industry: str | None,
                 region: str | None, birthday: date | None, special_days: list[dict[str, Any]],
                 owner: str | None, occurred_at: datetime, actor: str) -> None:
        self.profile: dict[str, Any] = {
            "name": name, "email": email, "phone": phone, "industry": industry, "region": region,
            "birthday": birthday, "special_days": special_days, "owner": owner}
        self.active = True
        self.erased = False
        self.visits: list[dict[str, Any]] = []
        self.tier: str | None = None
        self.score: Decimal | None = None
        self.override: dict[str, Any] | None = None
        # (at, kind, tier, expires_on) in event order: the tier as it stood at any instant.
        self.tier_log: list[tuple[datetime, str, str, date | None]] = []

    def update_profile(self, changes: dict[str, Any], *, occurred_at: datetime, actor: str) -> None:
        """Change some profile fields; an update that changes nothing records nothing."""
        if self.erased:
            raise CustomerErasedError("the customer's personal data was erased")
        checked = check_profile(changes)
        if "name" in changes and checked["name"] is None:
            raise InvalidValueError("name must be 1-200 characters")
        changed = {k: v for k, v in checked.items() if self.profile.get(k) != v}
        if changed:
            self._profile_updated(changes=changed, occurred_at=occurred_at, actor=actor)

    @event("ProfileUpdated")
    def _profile_updated(self, changes: dict[str, Any], occurred_at: datetime, actor: str) -> None:
        self.profile.update(changes)

    def record_visit(self, *, visited_on: date, by: str, notes: str | None,
                     occurred_at: datetime, actor: str) -> None:
        """Record a customer visit; a deactivated customer gets no visits."""
        if not self.active:
            raise CustomerInactiveError("no visits for a deactivated customer")
        self._visit_recorded(visited_on=visited_on, by=require_text("by", by),
                             notes=optional_text("notes", notes, max_len=4000),
                             occurred_at=occurred_at, actor=actor)

    @event("VisitRecorded")
    def _visit_recorded(self, visited_on: date, by: str, notes: str | None,
                        occurred_at: datetime, actor: str) -> None:
        self.visits.append({"visited_on": visited_on, "by": by})

    def assign_tier(self, *, tier: str, score: Decimal | None, indicators: dict[str, Any],
                    policy_version: int, reason: str, run_id: str | None,
                    occurred_at: datetime, actor: str) -> None:
        """Record the tier computed by a tiering run, with the reasons behind it."""
        self._tier_assigned(tier=require_tier(tier), previous_tier=self.tier, score=score,
                            indicators=indicators, policy_version=policy_version,
                            reason=require_text("reason", reason, max_len=500), run_id=run_id,
                            occurred_at=occurred_at, actor=actor)

    @event("TierAssigned")
    def _tier_assigned(self, tier: str, previous_tier: str | None, score: Decimal | None,
                       indicators: dict[str, Any], policy_version: int, reason: str,
                       run_id: str | None, occurred_at: datetime, actor: str) -> None:
        self.tier, self.score = tier, score
        self.tier_log.append((occurred_at, "assigned", tier, None))

    def override_tier(self, *, tier: str, reason: str, approved_by: str, expires_on: date | None,
                      occurred_at: datetime, actor: str) -> None:
        """Set the tier by hand, with a reason and an approver, until an optional expiry."""
        if not self.active:
            raise CustomerInactiveError("cannot override the tier of a deactivated customer")
        if expires_on is not None and expires_on <= occurred_at.date():
            raise InvalidValueError("expires_on must be after the override's date")
        self._tier_overridden(tier=require_tier(tier), previous_tier=self.effective_tier(occurred_at.date()),
                              reason=require_text("reason", reason, max_len=500),
                              approved_by=require_text("approved_by", approved_by),
                              expires_on=expires_on, occurred_at=occurred_at, actor=actor)

    @event("TierOverridden")
    def _tier_overridden(self, tier: str, previous_tier: str | None, reason: str, approved_by: str,
                         expires_on: date | None, occurred_at: datetime, actor: str) -> None:
        self.override = {"tier": tier, "expires_on": expires_on}
        self.tier_log.append((occurred_at, "override", tier, expires_on))

    def effective_tier(self, on: date) -> str | None:
        """The tier that applies on a day: an unexpired override, else the computed tier."""
        if self.override and (self.override["expires_on"] is None or on < self.override["expires_on"]):
            return self.override["tier"]
        return self.tier

    def tier_at(self, when: datetime) -> str | None:
        """The tier in force at an instant (for back-dated facts): the latest override set by
        then and not yet expired, else the latest computed tier assigned by then."""
        assigned = override = None
        for at, kind, tier, expires_on in self.tier_log:
            if at > when:
                continue
            if kind == "assigned":
                assigned = tier
            else:
                override = tier if expires_on is None or when.date() < expires_on else None
        return override or assigned

    def deactivate(self, *, reason: str | None, occurred_at: datetime, actor: str) -> None:
        if not self.active:
            raise CustomerInactiveError("the customer is already deactivated")
        self._deactivated(reason=optional_text("reason", reason, max_len=500),
                          occurred_at=occurred_at, actor=actor)

    @event("Deactivated")
    def _deactivated(self, reason: str | None, occurred_at: datetime, actor: str) -> None:
        self.active = False

    def reactivate(self, *, occurred_at: datetime, actor: str) -> None:
        if self.active:
            raise RuleViolationError("the customer is already active")
        self._reactivated(occurred_at=occurred_at, actor=actor)

    @event("Reactivated")
    def _reactivated(self, occurred_at: datetime, actor: str) -> None:
        self.active = True

    def erase_personal_data(self, *, reason: str, occurred_at: datetime, actor: str) -> None:
        """GDPR erasure: the personal fields go, business facts stay."""
        if self.erased:
            raise CustomerErasedError("the customer's personal data was already erased")
        self._personal_data_erased(reason=require_text("reason", reason, max_len=500),
                                   occurred_at=occurred_at, actor=actor)

    @event("PersonalDataErased")
    def _personal_data_erased(self, reason: str, occurred_at: datetime, actor: str) -> None:
        self.erased = True
        self.profile.update({"name": "[erased]", "email": None, "phone": None,
                             "birthday": None, "special_days": []})
