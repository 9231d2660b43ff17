"""Complaint aggregate: the state-machine table and the tier-based SLA clock."""

from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest

from crm.aggregates.complaint import (
    ALLOWED_FROM,
    AWAITING,
    CLOSED,
    CONFIRMED,
    IN_PROGRESS,
    OPEN,
    RESOLVED,
    AlreadyRecordedError,
    Complaint,
)
from crm.aggregates.errors import (
    DomainError,
    IllegalTransitionError,
    InvalidValueError,
    RuleViolationError,
)
from crm.aggregates.sla import DEFAULT_SLA_POLICY, SlaPolicy

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
ACTOR = "test"
STATUSES = (OPEN, IN_PROGRESS, AWAITING, RESOLVED, CONFIRMED, CLOSED)
A_DUE = T0 + timedelta(days=3)
A_WARN = T0 + timedelta(days=2, hours=9, minutes=36)  # 80 % of three days


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


def file_complaint(tier: str | None = "A", *, at: datetime = T0,
                   policy: SlaPolicy = DEFAULT_SLA_POLICY, **kwargs) -> Complaint:
    fields = {"customer_id": uuid4(), "category": "delivery", "description": "arrived broken",
              "order_id": None, "sku": None, "channel": None}
    fields.update(kwargs)
    return Complaint.file(tier=tier, policy=policy, occurred_at=at, actor=ACTOR, **fields)


def resolve(complaint: Complaint, at: datetime) -> None:
    complaint.resolve(resolution="replaced", root_cause=None, by="Kim", occurred_at=at, actor=ACTOR)


def confirm(complaint: Complaint, at: datetime) -> None:
    complaint.confirm_resolution(by="customer", occurred_at=at, actor=ACTOR)


def notify(complaint: Complaint, at: datetime) -> None:
    complaint.record_customer_notified(channel="email", address="jo@acme.example", occurred_at=at,
                                       actor=ACTOR)


def reopen(complaint: Complaint, at: datetime) -> None:
    complaint.reopen(reason="broke again", occurred_at=at, actor=ACTOR)


def rate(complaint: Complaint, score, at: datetime = hours(5)) -> None:
    complaint.rate(score=score, comment=None, occurred_at=at, actor=ACTOR)


def given_complaint(status: str = OPEN, *, tier: str | None = "A",
                    close_after_confirming: bool = False) -> Complaint:
    """A tier-A complaint filed at T0, driven by legal steps (one hour apart) into `status`."""
    complaint = file_complaint(tier)
    if status == IN_PROGRESS:
        complaint.assign(assignee="Kim", occurred_at=hours(1), actor=ACTOR)
    elif status == AWAITING:
        complaint.await_customer(reason="need photos", occurred_at=hours(1), actor=ACTOR)
    elif status in (RESOLVED, CONFIRMED, CLOSED):
        resolve(complaint, hours(1))
        if status == CONFIRMED or (status == CLOSED and close_after_confirming):
            confirm(complaint, hours(2))
        if status == CLOSED:
            complaint.close(reason=None, occurred_at=hours(3), actor=ACTOR)
    complaint.collect_events()
    assert complaint.status == status
    return complaint


def only_new_event(aggregate):
    events = aggregate.collect_events()
    assert len(events) == 1, events
    return events[0]


# Every step of the state machine, as one call with harmless valid arguments.
STEPS = {
    "assign": lambda c, at: c.assign(assignee="Kim", occurred_at=at, actor=ACTOR),
    "add_note": lambda c, at: c.add_note(text="called back", by="Kim", occurred_at=at, actor=ACTOR),
    "escalate": lambda c, at: c.escalate(reason="VIP", occurred_at=at, actor=ACTOR),
    "await_customer": lambda c, at: c.await_customer(reason=None, occurred_at=at, actor=ACTOR),
    "resume": lambda c, at: c.resume(occurred_at=at, actor=ACTOR),
    "issue_sla_warning": lambda c, at: c.issue_sla_warning(occurred_at=at, actor=ACTOR),
    "record_sla_breach": lambda c, at: c.record_sla_breach(occurred_at=at, actor=ACTOR),
    "resolve": resolve,
    "confirm_resolution": confirm,
    "record_customer_notified": notify,
    "rate": lambda c, at: rate(c, 4, at),
    "reopen": reopen,
    "close": lambda c, at: c.close(reason="done", occurred_at=at, actor=ACTOR),
}
EVENT_OF_STEP = {
    "assign": "Assigned", "add_note": "NoteAdded", "escalate": "Escalated",
    "await_customer": "AwaitingCustomer", "resume": "Resumed",
    "issue_sla_warning": "SlaWarningIssued", "record_sla_breach": "SlaBreached",
    "resolve": "Resolved", "confirm_resolution": "ResolutionConfirmed",
    "record_customer_notified": "CustomerNotified", "rate": "Rated", "reopen": "Reopened",
    "close": "Closed",
}
LATE = T0 + timedelta(days=30)  # past every deadline, so time rules never get in the way

ILLEGAL = [(action, status) for action, allowed in ALLOWED_FROM.items()
           for status in STATUSES if status not in allowed]
LEGAL = [(action, status) for action, allowed in ALLOWED_FROM.items() for status in allowed]


# --- filing -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("tier", "due_after", "warn_after"), [
    ("A", timedelta(days=3), timedelta(days=2.4)),
    ("B", timedelta(days=5), timedelta(days=4)),
    ("C", timedelta(days=7), timedelta(days=5.6)),
    ("D", timedelta(days=10), timedelta(days=8)),
    (None, timedelta(days=10), timedelta(days=8)),   # unrated: D's clock
])
def test_filing_records_the_tier_and_the_deadlines_from_the_policy(tier, due_after, warn_after):
    complaint = file_complaint(tier)

    event = only_new_event(complaint)
    assert type(event) is Complaint.Filed
    assert event.tier == tier
    assert event.due_at == T0 + due_after
    assert event.warn_at == T0 + warn_after
    assert event.sla_seconds == int(due_after.total_seconds())
    assert complaint.status == OPEN


def test_an_a_tier_complaint_is_due_in_three_days_and_warns_after_2_4_days():
    complaint = file_complaint("A")

    assert complaint.deadlines.due_at == datetime(2026, 1, 8, 9, 0, tzinfo=timezone.utc)
    assert complaint.deadlines.warn_at == datetime(2026, 1, 7, 18, 36, tzinfo=timezone.utc)


def test_filing_under_a_custom_policy_records_its_version_and_ratio():
    policy = SlaPolicy(durations={"A": timedelta(hours=8), "B": timedelta(days=1),
                                  "C": timedelta(days=2), "D": timedelta(days=3)},
                       warn_ratio=0.5, version=7)

    event = only_new_event(file_complaint("A", policy=policy))

    assert (event.sla_policy_version, event.warn_ratio, event.sla_seconds) == (7, 0.5, 8 * 3600)
    assert (event.warn_at, event.due_at) == (hours(4), hours(8))


@pytest.mark.parametrize("field", ["category", "description"])
def test_a_complaint_without_a_category_or_description_is_refused(field):
    with pytest.raises(InvalidValueError):
        file_complaint(**{field: "   "})


def test_filing_with_an_unknown_tier_is_refused_as_an_invalid_value():
    with pytest.raises(InvalidValueError):
        file_complaint("Z")


# --- the state-machine table ------------------------------------------------------------------

def test_the_transition_table_names_only_known_statuses_and_every_step_is_exercised():
    assert set(ALLOWED_FROM) == set(STEPS) == set(EVENT_OF_STEP)
    assert all(set(allowed) <= set(STATUSES) for allowed in ALLOWED_FROM.values())


@pytest.mark.parametrize(("action", "status"), ILLEGAL)
def test_a_step_from_a_status_the_table_does_not_allow_is_refused(action, status):
    complaint = given_complaint(status)

    with pytest.raises(IllegalTransitionError) as refused:
        STEPS[action](complaint, LATE)
    assert (refused.value.action, refused.value.status) == (action, status)
    assert complaint.collect_events() == []
    assert complaint.status == status


@pytest.mark.parametrize(("action", "status"), LEGAL)
def test_a_step_from_a_status_the_table_allows_is_recorded(action, status):
    complaint = given_complaint(status, close_after_confirming=True)

    STEPS[action](complaint, LATE)

    event = only_new_event(complaint)
    assert type(event).__name__ == EVENT_OF_STEP[action]
    assert type(event) is getattr(Complaint, EVENT_OF_STEP[action])


@pytest.mark.parametrize(("action", "status_after"), [
    ("assign", IN_PROGRESS), ("await_customer", AWAITING), ("resolve", RESOLVED),
    ("add_note", OPEN), ("escalate", OPEN),
])
def test_steps_from_an_open_complaint_lead_to_the_expected_status(action, status_after):
    complaint = given_complaint(OPEN)

    STEPS[action](complaint, hours(1))

    assert complaint.status == status_after


def test_escalations_count_up_levels():
    complaint = given_complaint(IN_PROGRESS)
    complaint.escalate(reason=None, occurred_at=hours(2), actor=ACTOR)
    complaint.collect_events()

    complaint.escalate(reason="  still angry ", occurred_at=hours(3), actor=ACTOR)

    event = only_new_event(complaint)
    assert (event.level, event.reason) == (2, "still angry")


def test_a_note_without_text_is_refused():
    complaint = given_complaint(IN_PROGRESS)

    with pytest.raises(InvalidValueError):
        complaint.add_note(text="  ", by="Kim", occurred_at=hours(2), actor=ACTOR)
    assert complaint.collect_events() == []


# --- pausing the clock ------------------------------------------------------------------------

def test_awaiting_the_customer_then_resuming_shifts_both_deadlines_by_exactly_the_pause():
    complaint = given_complaint(IN_PROGRESS)
    complaint.await_customer(reason="need photos", occurred_at=hours(2), actor=ACTOR)
    complaint.collect_events()
    pause = timedelta(days=1, hours=5, minutes=17, seconds=3)

    complaint.resume(occurred_at=hours(2) + pause, actor=ACTOR)

    event = only_new_event(complaint)
    assert type(event) is Complaint.Resumed
    assert event.paused_seconds == int(pause.total_seconds())
    assert event.due_at == A_DUE + pause
    assert event.warn_at == A_WARN + pause
    assert complaint.deadlines.due_at == A_DUE + pause


def test_two_pauses_shift_the_deadlines_by_their_sum():
    complaint = given_complaint(OPEN)
    complaint.await_customer(reason=None, occurred_at=hours(1), actor=ACTOR)
    complaint.resume(occurred_at=hours(3), actor=ACTOR)            # 2 h
    complaint.await_customer(reason=None, occurred_at=hours(10), actor=ACTOR)
    complaint.collect_events()

    complaint.resume(occurred_at=hours(15), actor=ACTOR)           # 5 h

    event = only_new_event(complaint)
    assert (event.due_at, event.warn_at) == (A_DUE + timedelta(hours=7), A_WARN + timedelta(hours=7))


@pytest.mark.parametrize(("assigned", "status_after"), [(True, IN_PROGRESS), (False, OPEN)])
def test_resuming_returns_the_complaint_to_where_it_was(assigned, status_after):
    complaint = given_complaint(IN_PROGRESS if assigned else OPEN)
    complaint.await_customer(reason=None, occurred_at=hours(2), actor=ACTOR)
    complaint.collect_events()

    complaint.resume(occurred_at=hours(4), actor=ACTOR)

    assert type(only_new_event(complaint)) is Complaint.Resumed
    assert complaint.status == status_after
    assert complaint.paused_at is None


def test_resuming_before_the_pause_began_is_refused():
    complaint = given_complaint(AWAITING)  # paused at T0 + 1 h

    with pytest.raises(InvalidValueError):
        complaint.resume(occurred_at=hours(0.5), actor=ACTOR)
    assert complaint.collect_events() == []
    assert complaint.status == AWAITING


def test_a_pause_can_make_an_otherwise_late_resolution_on_time():
    complaint = given_complaint(IN_PROGRESS)
    complaint.await_customer(reason=None, occurred_at=hours(2), actor=ACTOR)
    complaint.resume(occurred_at=hours(2) + timedelta(days=2), actor=ACTOR)
    complaint.collect_events()

    resolve(complaint, A_DUE + timedelta(days=1))  # a day past the original due time

    assert only_new_event(complaint).on_time is True


# --- resolving --------------------------------------------------------------------------------

@pytest.mark.parametrize(("resolved_at", "on_time"), [
    (hours(1), True),
    (A_DUE - timedelta(seconds=1), True),
    (A_DUE, True),
    (A_DUE + timedelta(seconds=1), False),
    (A_DUE + timedelta(days=4), False),
])
def test_a_resolution_is_on_time_when_made_by_the_due_time(resolved_at, on_time):
    complaint = given_complaint(IN_PROGRESS)

    resolve(complaint, resolved_at)

    event = only_new_event(complaint)
    assert type(event) is Complaint.Resolved
    assert event.on_time is on_time
    assert complaint.resolution == "replaced"


def test_a_resolution_needs_text():
    complaint = given_complaint(IN_PROGRESS)

    with pytest.raises(InvalidValueError):
        complaint.resolve(resolution=" ", root_cause=None, by="Kim", occurred_at=hours(2),
                          actor=ACTOR)
    assert complaint.collect_events() == []
    assert complaint.status == IN_PROGRESS


# --- reopening --------------------------------------------------------------------------------

def test_reopening_starts_a_fresh_clock_from_the_reopen_time():
    complaint = given_complaint(IN_PROGRESS)
    complaint.await_customer(reason=None, occurred_at=hours(2), actor=ACTOR)
    complaint.resume(occurred_at=hours(30), actor=ACTOR)          # old clock shifted 28 h
    resolve(complaint, hours(31))
    complaint.collect_events()
    reopened_at = T0 + timedelta(days=20)

    reopen(complaint, reopened_at)

    event = only_new_event(complaint)
    assert type(event) is Complaint.Reopened
    assert event.due_at == reopened_at + timedelta(days=3)
    assert event.warn_at == reopened_at + timedelta(days=2.4)
    assert complaint.deadlines.due_at == reopened_at + timedelta(days=3)


@pytest.mark.parametrize("from_status", [RESOLVED, CONFIRMED, CLOSED])
def test_reopening_clears_the_rating_and_resolution(from_status):
    complaint = given_complaint(from_status)
    rate(complaint, 2)
    complaint.collect_events()

    reopen(complaint, hours(10))

    assert type(only_new_event(complaint)) is Complaint.Reopened
    assert complaint.rating is None and complaint.resolution is None


@pytest.mark.parametrize(("assigned", "status_after"), [(True, IN_PROGRESS), (False, OPEN)])
def test_a_reopened_complaint_returns_to_its_assignee_if_it_had_one(assigned, status_after):
    complaint = given_complaint(IN_PROGRESS if assigned else OPEN)
    resolve(complaint, hours(2))
    complaint.collect_events()

    reopen(complaint, hours(3))

    assert complaint.status == status_after


def test_a_reopened_and_resolved_again_complaint_can_be_rated_again():
    complaint = given_complaint(RESOLVED)
    rate(complaint, 1)
    reopen(complaint, hours(5))
    resolve(complaint, hours(6))
    complaint.collect_events()

    rate(complaint, 5, hours(7))

    assert only_new_event(complaint).score == 5
    assert complaint.rating == 5


# --- rating -----------------------------------------------------------------------------------

@pytest.mark.parametrize("score", [1, 3, 5])
def test_a_rating_from_1_to_5_is_recorded(score):
    complaint = given_complaint(CONFIRMED)

    complaint.rate(score=score, comment="  fine ", occurred_at=hours(5), actor=ACTOR)

    event = only_new_event(complaint)
    assert type(event) is Complaint.Rated
    assert (event.score, event.comment) == (score, "fine")


@pytest.mark.parametrize("score", [0, 6, -1, True, False, 3.0, "3", None])
def test_a_rating_that_is_not_a_whole_number_from_1_to_5_is_refused(score):
    complaint = given_complaint(RESOLVED)

    with pytest.raises(InvalidValueError):
        rate(complaint, score)
    assert complaint.collect_events() == []
    assert complaint.rating is None


def test_rating_a_resolution_twice_is_refused():
    complaint = given_complaint(CLOSED)
    rate(complaint, 4)
    complaint.collect_events()

    with pytest.raises(AlreadyRecordedError):
        rate(complaint, 5)
    assert complaint.collect_events() == []
    assert complaint.rating == 4


# --- SLA warning and breach -------------------------------------------------------------------

def test_an_sla_warning_records_the_current_deadlines():
    complaint = given_complaint(IN_PROGRESS)

    complaint.issue_sla_warning(occurred_at=A_WARN, actor=ACTOR)

    event = only_new_event(complaint)
    assert type(event) is Complaint.SlaWarningIssued
    assert (event.warn_at, event.due_at) == (A_WARN, A_DUE)


def test_a_second_sla_warning_for_the_same_deadline_is_refused():
    complaint = given_complaint(IN_PROGRESS)
    complaint.issue_sla_warning(occurred_at=A_WARN, actor=ACTOR)
    complaint.collect_events()

    with pytest.raises(AlreadyRecordedError):
        complaint.issue_sla_warning(occurred_at=A_WARN + timedelta(hours=1), actor=ACTOR)
    assert complaint.collect_events() == []


def test_a_new_sla_warning_is_allowed_once_a_pause_has_moved_the_deadline():
    complaint = given_complaint(IN_PROGRESS)
    complaint.issue_sla_warning(occurred_at=A_WARN, actor=ACTOR)
    complaint.await_customer(reason=None, occurred_at=A_WARN + timedelta(hours=1), actor=ACTOR)
    complaint.resume(occurred_at=A_WARN + timedelta(hours=6), actor=ACTOR)   # shifted 5 h
    complaint.collect_events()

    complaint.issue_sla_warning(occurred_at=A_WARN + timedelta(hours=5), actor=ACTOR)

    event = only_new_event(complaint)
    assert event.warn_at == A_WARN + timedelta(hours=5)
    with pytest.raises(AlreadyRecordedError):
        complaint.issue_sla_warning(occurred_at=A_WARN + timedelta(hours=6), actor=ACTOR)


def test_an_sla_warning_before_the_warning_mark_is_refused():
    complaint = given_complaint(IN_PROGRESS)

    with pytest.raises(RuleViolationError):
        complaint.issue_sla_warning(occurred_at=A_WARN - timedelta(hours=1), actor=ACTOR)
    assert complaint.collect_events() == []


def test_a_breach_before_the_due_time_is_refused():
    complaint = given_complaint(IN_PROGRESS)

    with pytest.raises(RuleViolationError) as refused:
        complaint.record_sla_breach(occurred_at=A_DUE - timedelta(seconds=1), actor=ACTOR)
    assert type(refused.value) is RuleViolationError
    assert complaint.collect_events() == []
    assert complaint.breached_for is None


@pytest.mark.parametrize("at", [A_DUE, A_DUE + timedelta(days=2)])
def test_a_breach_at_or_after_the_due_time_is_recorded(at):
    complaint = given_complaint(IN_PROGRESS)

    complaint.record_sla_breach(occurred_at=at, actor=ACTOR)

    event = only_new_event(complaint)
    assert type(event) is Complaint.SlaBreached and event.due_at == A_DUE


def test_a_second_breach_for_the_same_due_time_is_refused():
    complaint = given_complaint(IN_PROGRESS)
    complaint.record_sla_breach(occurred_at=A_DUE, actor=ACTOR)
    complaint.collect_events()

    with pytest.raises(AlreadyRecordedError):
        complaint.record_sla_breach(occurred_at=A_DUE + timedelta(hours=1), actor=ACTOR)
    assert complaint.collect_events() == []


def test_a_reopened_complaint_can_breach_its_new_due_time():
    complaint = given_complaint(IN_PROGRESS)
    complaint.record_sla_breach(occurred_at=A_DUE, actor=ACTOR)
    resolve(complaint, A_DUE + timedelta(hours=1))
    reopened_at = A_DUE + timedelta(days=1)
    reopen(complaint, reopened_at)
    complaint.collect_events()

    with pytest.raises(RuleViolationError):
        complaint.record_sla_breach(occurred_at=reopened_at + timedelta(days=2), actor=ACTOR)
    complaint.record_sla_breach(occurred_at=reopened_at + timedelta(days=3), actor=ACTOR)

    event = only_new_event(complaint)
    assert event.due_at == reopened_at + timedelta(days=3)


# --- confirming and notifying -----------------------------------------------------------------

def test_confirming_a_resolution_records_who_confirmed():
    complaint = given_complaint(RESOLVED)

    confirm(complaint, hours(4))

    event = only_new_event(complaint)
    assert type(event) is Complaint.ResolutionConfirmed and event.by == "customer"
    assert complaint.status == CONFIRMED


@pytest.mark.parametrize("close_first", [False, True])
def test_the_customer_is_notified_of_a_confirmed_resolution(close_first):
    complaint = given_complaint(CLOSED if close_first else CONFIRMED, close_after_confirming=True)

    notify(complaint, hours(5))

    event = only_new_event(complaint)
    assert type(event) is Complaint.CustomerNotified
    assert (event.channel, event.address) == ("email", "jo@acme.example")
    assert event.confirmation_version == complaint.confirmed_version


def test_the_customer_is_notified_only_once_per_confirmation():
    complaint = given_complaint(CONFIRMED)
    notify(complaint, hours(5))
    complaint.close(reason=None, occurred_at=hours(6), actor=ACTOR)
    complaint.collect_events()

    with pytest.raises(AlreadyRecordedError):
        notify(complaint, hours(7))
    assert complaint.collect_events() == []


def test_the_customer_may_be_notified_again_after_reopen_resolve_and_confirm():
    complaint = given_complaint(CONFIRMED)
    notify(complaint, hours(5))
    first_confirmation = complaint.confirmed_version
    reopen(complaint, hours(6))
    resolve(complaint, hours(7))
    confirm(complaint, hours(8))
    complaint.collect_events()

    notify(complaint, hours(9))

    event = only_new_event(complaint)
    assert event.confirmation_version == complaint.confirmed_version != first_confirmation


def test_after_a_reopen_the_customer_is_not_notified_again_without_a_new_confirmation():
    complaint = given_complaint(CONFIRMED)
    notify(complaint, hours(5))
    reopen(complaint, hours(6))
    resolve(complaint, hours(7))
    complaint.close(reason=None, occurred_at=hours(8), actor=ACTOR)
    complaint.collect_events()

    with pytest.raises(RuleViolationError):
        notify(complaint, hours(9))
    assert complaint.collect_events() == []


def test_notifying_on_a_never_confirmed_closed_complaint_is_not_reported_as_already_notified():
    complaint = given_complaint(CLOSED)  # resolve, then close, no confirmation

    with pytest.raises(DomainError) as refused:
        notify(complaint, hours(5))
    assert not isinstance(refused.value, AlreadyRecordedError)
    assert complaint.collect_events() == []


# --- replay -----------------------------------------------------------------------------------

def test_a_complaint_rebuilt_from_its_events_matches_the_live_one():
    live = file_complaint("B", sku="WIDGET-1", channel="phone")
    live.assign(assignee="Kim", occurred_at=hours(1), actor=ACTOR)
    live.escalate(reason=None, occurred_at=hours(2), actor=ACTOR)
    live.await_customer(reason=None, occurred_at=hours(3), actor=ACTOR)
    live.resume(occurred_at=hours(13), actor=ACTOR)
    live.issue_sla_warning(occurred_at=T0 + timedelta(days=4, hours=10), actor=ACTOR)
    resolve(live, T0 + timedelta(days=4, hours=11))
    confirm(live, T0 + timedelta(days=4, hours=12))
    notify(live, T0 + timedelta(days=4, hours=13))
    rate(live, 5, T0 + timedelta(days=4, hours=14))
    events = live.collect_events()

    rebuilt = None
    for event in events:
        rebuilt = event.mutate(rebuilt)

    assert len(events) == 10
    assert rebuilt.id == live.id and rebuilt.version == live.version == 10
    assert rebuilt.status == live.status == CONFIRMED
    assert rebuilt.deadlines == live.deadlines
    assert rebuilt.deadlines.due_at == T0 + timedelta(days=5, hours=10)
    assert (rebuilt.tier, rebuilt.sku, rebuilt.assignee, rebuilt.escalations) == \
        ("B", "WIDGET-1", "Kim", 1)
    assert (rebuilt.rating, rebuilt.resolution) == (5, "replaced")
    assert rebuilt.warned_for == live.warned_for
    assert rebuilt.confirmed_version == live.confirmed_version == rebuilt.notified_for_version
