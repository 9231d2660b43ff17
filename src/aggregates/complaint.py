"""The Complaint aggregate: an explicit state machine with a tier-based SLA clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from crm.aggregates.errors import IllegalTransitionError, InvalidValueError, RuleViolationError
from crm.aggregates.sla import Deadlines, SlaPolicy, WorkingCalendar, shift_clock_for_pause, start_clock
from crm.aggregates.values import optional_text, require_text, require_tier

OPEN, IN_PROGRESS, AWAITING = "open", "in_progress", "awaiting_customer"
RESOLVED, CONFIRMED, CLOSED = "resolved", "confirmed", "closed"
ACTIVE = (OPEN, IN_PROGRESS)

# Which statuses each step may start from: the whole state machine in one table.
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "assign": ACTIVE,
    "add_note": (OPEN, IN_PROGRESS, AWAITING, RESOLVED, CONFIRMED),
    "escalate": ACTIVE,
    "await_customer": ACTIVE,
    "resume": (AWAITING,),
    "issue_sla_warning": ACTIVE,
    "record_sla_breach": ACTIVE,
    "resolve": ACTIVE,
    "confirm_resolution": (RESOLVED,),
    "record_customer_notified": (CONFIRMED, CLOSED),
    "rate": (RESOLVED, CONFIRMED, CLOSED),
    "reopen": (RESOLVED, CONFIRMED, CLOSED),
    "close": (RESOLVED, CONFIRMED),
}


class AlreadyRecordedError(RuleViolationError):
    """This fact was already recorded for this deadline or resolution."""


class Complaint(Aggregate):
    """A customer's complaint, from filing to closing, with its SLA clock."""

    @classmethod
    def file(cls, *, customer_id: UUID, tier: str | None, category: str, description: str,
             order_id: UUID | None, sku: str | None, channel: str | None, policy: SlaPolicy,
             occurred_at: datetime, actor: str) -> Complaint:
        """File a complaint; the customer's tier now fixes the clock (unrated runs on D's time)."""
        duration = policy.duration_for(None if tier is None else require_tier(tier))
        clock = start_clock(occurred_at, duration, policy.warn_ratio, policy.calendar)
        return cls(customer_id=customer_id, tier=tier, category=require_text("category", category, max_len=100),
                   description=require_text("description", description, max_len=10_000),
                   order_id=order_id, sku=optional_text("sku", sku, max_len=64),
                   channel=optional_text("channel", channel, max_len=50),
                   sla_seconds=int(duration.total_seconds()), warn_ratio=policy.warn_ratio,
                   sla_policy_version=policy.version, due_at=clock.due_at, warn_at=clock.warn_at,
                   calendar=None if policy.calendar is None else policy.calendar.to_dict(),
                   occurred_at=occurred_at, actor=actor)

    @event("Filed")
    def __init__(self, *, customer_id: UUID, tier: str | None, category: str, description: str,
                 order_id: UUID | None, sku: str | None, channel: str | None, sla_seconds: int,
                 warn_ratio: float, sla_policy_version: int, due_at: datetime, warn_at: datetime,
                 calendar: dict[str, Any] | None = None, occurred_at: datetime, actor: str) -> None:
        self.customer_id, self.tier, self.sku, self.order_id = customer_id, tier, sku, order_id
        self.sla_seconds, self.warn_ratio = sla_seconds, warn_ratio
        # The working calendar in force at filing keeps governing this complaint's clock.
        self.calendar = None if calendar is None else WorkingCalendar.from_dict(calendar)
        self.deadlines = Deadlines(warn_at=warn_at, due_at=due_at)
        self.status = OPEN
        self.assignee: str | None = None
        self.escalations = 0
        self.paused_at: datetime | None = None
        self.warned_for: datetime | None = None
        self.breached_for: datetime | None = None
        self.resolution: str | None = None
        self.rating: int | None = None
        self.notified_for_version: int | None = None
        self.confirmed_version: int | None = None

    def _check(self, action: str) -> None:
        if self.status not in ALLOWED_FROM[action]:
            raise IllegalTransitionError(action, self.status)

    def assign(self, *, assignee: str, occurred_at: datetime, actor: str) -> None:
        self._check("assign")
        self._assigned(assignee=require_text("assignee", assignee), occurred_at=occurred_at, actor=actor)

    @event("Assigned")
    def _assigned(self, assignee: str, occurred_at: datetime, actor: str) -> None:
        self.assignee, self.status = assignee, IN_PROGRESS

    def add_note(self, *, text: str, by: str, occurred_at: datetime, actor: str) -> None:
        self._check("add_note")
        self._note_added(text=require_text("text", text, max_len=10_000), by=require_text("by", by),
                         occurred_at=occurred_at, actor=actor)

    @event("NoteAdded")
    def _note_added(self, text: str, by: str, occurred_at: datetime, actor: str) -> None:
        pass

    def escalate(self, *, reason: str | None, occurred_at: datetime, actor: str) -> None:
        self._check("escalate")
        self._escalated(level=self.escalations + 1, reason=optional_text("reason", reason, max_len=500),
                        occurred_at=occurred_at, actor=actor)

    @event("Escalated")
    def _escalated(self, level: int, reason: str | None, occurred_at: datetime, actor: str) -> None:
        self.escalations = level

    def await_customer(self, *, reason: str | None, occurred_at: datetime, actor: str) -> None:
        """Stop the SLA clock while we wait for the customer."""
        self._check("await_customer")
        self._awaiting_customer(reason=optional_text("reason", reason, max_len=500),
                                occurred_at=occurred_at, actor=actor)

    @event("AwaitingCustomer")
    def _awaiting_customer(self, reason: str | None, occurred_at: datetime, actor: str) -> None:
        self.status, self.paused_at = AWAITING, occurred_at

    def resume(self, *, occurred_at: datetime, actor: str) -> None:
        """Restart the clock; the time spent waiting moves both deadlines."""
        self._check("resume")
        assert self.paused_at is not None
        if occurred_at < self.paused_at:
            raise InvalidValueError("cannot resume before the pause began")
        paused = occurred_at - self.paused_at
        shifted = shift_clock_for_pause(self.deadlines, self.paused_at, occurred_at, self.calendar)
        self._resumed(paused_seconds=int(paused.total_seconds()), due_at=shifted.due_at,
                      warn_at=shifted.warn_at, occurred_at=occurred_at, actor=actor)

    @event("Resumed")
    def _resumed(self, paused_seconds: int, due_at: datetime, warn_at: datetime,
                 occurred_at: datetime, actor: str) -> None:
        self.deadlines = Deadlines(warn_at=warn_at, due_at=due_at)
        self.status, self.paused_at = (IN_PROGRESS if self.assignee else OPEN), None

    def issue_sla_warning(self, *, occurred_at: datetime, actor: str) -> None:
        """Record that the warning mark passed; once per warning deadline."""
        self._check("issue_sla_warning")
        if self.warned_for == self.deadlines.warn_at:
            raise AlreadyRecordedError("the SLA warning for this deadline was already issued")
        if occurred_at < self.deadlines.warn_at:
            raise RuleViolationError("the warning mark has not passed yet")
        self._sla_warning_issued(warn_at=self.deadlines.warn_at, due_at=self.deadlines.due_at,
                                 occurred_at=occurred_at, actor=actor)

    @event("SlaWarningIssued")
    def _sla_warning_issued(self, warn_at: datetime, due_at: datetime, occurred_at: datetime,
                            actor: str) -> None:
        self.warned_for = warn_at

    def record_sla_breach(self, *, occurred_at: datetime, actor: str) -> None:
        """Record that the due time passed unresolved; once per due time."""
        self._check("record_sla_breach")
        if self.breached_for == self.deadlines.due_at:
            raise AlreadyRecordedError("the SLA breach for this deadline was already recorded")
        if occurred_at < self.deadlines.due_at:
            raise RuleViolationError("the complaint is not yet due")
        self._sla_breached(due_at=self.deadlines.due_at, occurred_at=occurred_at, actor=actor)

    @event("SlaBreached")
    def _sla_breached(self, due_at: datetime, occurred_at: datetime, actor: str) -> None:
        self.breached_for = due_at

    def resolve(self, *, resolution: str, root_cause: str | None, by: str,
                occurred_at: datetime, actor: str) -> None:
        self._check("resolve")
        self._resolved(resolution=require_text("resolution", resolution, max_len=10_000),
                       root_cause=optional_text("root_cause", root_cause, max_len=2_000),
                       by=require_text("by", by), on_time=occurred_at <= self.deadlines.due_at,
                       occurred_at=occurred_at, actor=actor)

    @event("Resolved")
    def _resolved(self, resolution: str, root_cause: str | None, by: str, on_time: bool,
                  occurred_at: datetime, actor: str) -> None:
        self.status, self.resolution = RESOLVED, resolution

    def confirm_resolution(self, *, by: str, occurred_at: datetime, actor: str) -> None:
        self._check("confirm_resolution")
        self._resolution_confirmed(by=require_text("by", by), occurred_at=occurred_at, actor=actor)

    @event("ResolutionConfirmed")
    def _resolution_confirmed(self, by: str, occurred_at: datetime, actor: str) -> None:
        self.status = CONFIRMED
        self.confirmed_version = self.version

    def record_customer_notified(self, *, channel: str, address: str, occurred_at: datetime,
                                 actor: str) -> None:
        """The customer was told of the confirmed resolution; once per confirmation."""
        self._check("record_customer_notified")
        if self.confirmed_version is None:
            raise RuleViolationError("the current resolution was never confirmed; nothing to notify")
        if self.notified_for_version == self.confirmed_version:
            raise AlreadyRecordedError("the customer was already notified of this resolution")
        self._customer_notified(channel=require_text("channel", channel, max_len=20),
                                address=require_text("address", address, max_len=254),
                                confirmation_version=self.confirmed_version, customer_id=self.customer_id,
                                occurred_at=occurred_at, actor=actor)

    class CustomerNotified(Aggregate.Event):
        """v2 names the customer, whose key seals the address (so erasure reaches it); v1 did not."""

        channel: str
        address: str
        confirmation_version: int
        customer_id: UUID | None
        occurred_at: datetime
        actor: str
        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["customer_id"] = None

    @event(CustomerNotified)
    def _customer_notified(self, channel: str, address: str, confirmation_version: int,
                           customer_id: UUID | None, occurred_at: datetime, actor: str) -> None:
        self.notified_for_version = confirmation_version

    def rate(self, *, score: int, comment: str | None, occurred_at: datetime, actor: str) -> None:
        """The customer's rating of the resolution, 1-5, once per resolution."""
        self._check("rate")
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise InvalidValueError("score must be a whole number 1-5")
        if self.rating is not None:
            raise AlreadyRecordedError("this resolution was already rated")
        self._rated(score=score, comment=optional_text("comment", comment, max_len=2_000),
                    occurred_at=occurred_at, actor=actor)

    @event("Rated")
    def _rated(self, score: int, comment: str | None, occurred_at: datetime, actor: str) -> None:
        self.rating = score

    def reopen(self, *, reason: str, occurred_at: datetime, actor: str) -> None:
        """Reopen after resolution, confirmation or closing; the SLA clock starts afresh."""
        self._check("reopen")
        clock = start_clock(occurred_at, timedelta(seconds=self.sla_seconds), self.warn_ratio, self.calendar)
        self._reopened(reason=require_text("reason", reason, max_len=2_000), due_at=clock.due_at,
                       warn_at=clock.warn_at, occurred_at=occurred_at, actor=actor)

    @event("Reopened")
    def _reopened(self, reason: str, due_at: datetime, warn_at: datetime, occurred_at: datetime,
                  actor: str) -> None:
        self.deadlines = Deadlines(warn_at=warn_at, due_at=due_at)
        self.status = IN_PROGRESS if self.assignee else OPEN
        self.resolution, self.rating, self.confirmed_version = None, None, None

    def close(self, *, reason: str | None, occurred_at: datetime, actor: str) -> None:
        self._check("close")
        self._closed(reason=optional_text("reason", reason, max_len=500), occurred_at=occurred_at,
                     actor=actor)

    @event("Closed")
    def _closed(self, reason: str | None, occurred_at: datetime, actor: str) -> None:
        self.status = CLOSED

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "due_at": self.deadlines.due_at, "warn_at": self.deadlines.warn_at}
