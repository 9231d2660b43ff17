"""Customer aggregate: given past events, when a command, then the new events (or a refusal)."""

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from crm.aggregates.customer import Customer, CustomerErasedError, CustomerInactiveError
from crm.aggregates.errors import InvalidValueError, RuleViolationError

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(days=1)
ACTOR = "test"


def register(**profile) -> Customer:
    profile.setdefault("name", "Acme Ltd")
    return Customer.register(occurred_at=T0, actor=ACTOR, **profile)


def given_customer(**profile) -> Customer:
    """A registered customer whose past events are already drained."""
    customer = register(**profile)
    customer.collect_events()
    return customer


def only_new_event(aggregate):
    events = aggregate.collect_events()
    assert len(events) == 1, events
    return events[0]


def assign(customer: Customer, tier: str, *, at: datetime = T0) -> None:
    customer.assign_tier(tier=tier, score=Decimal("0.5"), indicators={"revenue": "100"},
                         policy_version=1, reason="tiering run", run_id="run-1",
                         occurred_at=at, actor=ACTOR)


def override(customer: Customer, tier: str = "A", *, reason: str = "key account",
             approved_by: str = "sales director", expires_on: date | None = None,
             at: datetime = T0) -> None:
    customer.override_tier(tier=tier, reason=reason, approved_by=approved_by,
                           expires_on=expires_on, occurred_at=at, actor=ACTOR)


# --- register ---------------------------------------------------------------------------------

def test_registering_a_customer_records_a_registered_event_with_the_trimmed_name():
    customer = register(name="  Acme Ltd  ", email="buyer@acme.example", region="North")

    event = only_new_event(customer)
    assert type(event) is Customer.Registered
    assert event.name == "Acme Ltd"
    assert event.email == "buyer@acme.example"
    assert event.region == "North"
    assert event.actor == ACTOR and event.occurred_at == T0
    assert customer.active and not customer.erased and customer.tier is None


@pytest.mark.parametrize("length", [1, 200])
def test_a_name_of_1_to_200_characters_is_accepted(length):
    customer = register(name="n" * length)

    assert only_new_event(customer).name == "n" * length


@pytest.mark.parametrize("name", ["", "   ", "n" * 201, None])
def test_a_name_that_is_blank_or_longer_than_200_characters_is_refused(name):
    with pytest.raises(InvalidValueError):
        Customer.register(name=name, occurred_at=T0, actor=ACTOR)


@pytest.mark.parametrize("email", ["no-at-sign.example", "buyer@nodot", "two words@acme.example",
                                   "@acme.example", "buyer@@acme.example",
                                   "x" * 250 + "@a.example"])
def test_an_invalid_email_is_refused_at_registration(email):
    with pytest.raises(InvalidValueError):
        register(email=email)


def test_blank_optional_fields_are_recorded_as_absent():
    customer = register(phone="   ", industry="", owner="  Jo  ")

    event = only_new_event(customer)
    assert event.phone is None and event.industry is None and event.email is None
    assert event.owner == "Jo"


def test_special_days_are_recorded_with_trimmed_labels():
    customer = register(special_days=[{"label": "  Founding day ", "date": date(2001, 3, 4)}])

    event = only_new_event(customer)
    assert event.special_days == [{"label": "Founding day", "date": date(2001, 3, 4)}]


def test_a_special_day_whose_date_is_not_a_date_is_refused():
    with pytest.raises(InvalidValueError):
        register(special_days=[{"label": "Founding day", "date": "2001-03-04"}])


def test_a_special_day_without_a_label_is_refused():
    with pytest.raises(InvalidValueError):
        register(special_days=[{"label": "  ", "date": date(2001, 3, 4)}])


def test_twenty_special_days_are_accepted_but_twenty_one_are_refused():
    days = [{"label": f"day {i}", "date": date(2026, 1, 1) + timedelta(days=i)} for i in range(21)]

    assert len(only_new_event(register(special_days=days[:20])).special_days) == 20
    with pytest.raises(InvalidValueError):
        register(special_days=days)


def test_registering_with_an_unknown_profile_field_is_refused():
    with pytest.raises(InvalidValueError):
        register(emial="buyer@acme.example")


def test_a_birthday_that_is_not_a_date_is_refused():
    with pytest.raises(InvalidValueError):
        register(birthday="next tuesday")


# --- update_profile ---------------------------------------------------------------------------

def test_a_profile_update_records_only_the_fields_that_changed():
    customer = given_customer(email="old@acme.example", region="North")

    customer.update_profile({"email": "new@acme.example", "region": "North", "name": " Acme Ltd "},
                            occurred_at=T1, actor=ACTOR)

    event = only_new_event(customer)
    assert type(event) is Customer.ProfileUpdated
    assert event.changes == {"email": "new@acme.example"}
    assert customer.profile["email"] == "new@acme.example"


def test_a_profile_update_that_changes_nothing_records_nothing():
    customer = given_customer(email="old@acme.example", phone="123")

    customer.update_profile({"name": "  Acme Ltd", "email": "old@acme.example", "phone": "123 "},
                            occurred_at=T1, actor=ACTOR)

    assert customer.collect_events() == []


def test_an_unknown_profile_field_is_refused():
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        customer.update_profile({"shoe_size": 44}, occurred_at=T1, actor=ACTOR)
    assert customer.collect_events() == []


def test_a_profile_update_with_an_invalid_email_is_refused():
    customer = given_customer(email="old@acme.example")

    with pytest.raises(InvalidValueError):
        customer.update_profile({"email": "not an email"}, occurred_at=T1, actor=ACTOR)
    assert customer.collect_events() == []
    assert customer.profile["email"] == "old@acme.example"


@pytest.mark.parametrize("name", ["", "  ", None, "n" * 201])
def test_a_profile_update_cannot_blank_or_overlong_the_name(name):
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        customer.update_profile({"name": name}, occurred_at=T1, actor=ACTOR)
    assert customer.collect_events() == []


def test_a_profile_update_can_clear_an_optional_field():
    customer = given_customer(phone="123")

    customer.update_profile({"phone": "  "}, occurred_at=T1, actor=ACTOR)

    assert only_new_event(customer).changes == {"phone": None}


# --- visits -----------------------------------------------------------------------------------

def test_a_visit_to_an_active_customer_is_recorded():
    customer = given_customer()

    customer.record_visit(visited_on=date(2026, 1, 6), by="  Sam ", notes="demo", occurred_at=T1,
                          actor=ACTOR)

    event = only_new_event(customer)
    assert type(event) is Customer.VisitRecorded
    assert event.visited_on == date(2026, 1, 6) and event.by == "Sam" and event.notes == "demo"
    assert customer.visits == [{"visited_on": date(2026, 1, 6), "by": "Sam"}]


def test_a_deactivated_customer_gets_no_visits():
    customer = given_customer()
    customer.deactivate(reason="left", occurred_at=T0, actor=ACTOR)
    customer.collect_events()

    with pytest.raises(CustomerInactiveError):
        customer.record_visit(visited_on=date(2026, 1, 6), by="Sam", notes=None, occurred_at=T1,
                              actor=ACTOR)
    assert customer.collect_events() == []
    assert customer.visits == []


def test_a_reactivated_customer_gets_visits_again():
    customer = given_customer()
    customer.deactivate(reason=None, occurred_at=T0, actor=ACTOR)
    customer.reactivate(occurred_at=T0, actor=ACTOR)
    customer.collect_events()

    customer.record_visit(visited_on=date(2026, 1, 6), by="Sam", notes=None, occurred_at=T1,
                          actor=ACTOR)

    assert type(only_new_event(customer)) is Customer.VisitRecorded


def test_a_visit_without_a_visitor_is_refused():
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        customer.record_visit(visited_on=date(2026, 1, 6), by=" ", notes=None, occurred_at=T1,
                              actor=ACTOR)
    assert customer.collect_events() == []


# --- assign_tier ------------------------------------------------------------------------------

def test_the_first_tier_assignment_has_no_previous_tier():
    customer = given_customer()

    assign(customer, "B")

    event = only_new_event(customer)
    assert type(event) is Customer.TierAssigned
    assert event.tier == "B" and event.previous_tier is None
    assert event.score == Decimal("0.5") and event.policy_version == 1 and event.run_id == "run-1"
    assert customer.tier == "B"


def test_a_later_tier_assignment_carries_the_previous_tier():
    customer = given_customer()
    assign(customer, "B")
    customer.collect_events()

    assign(customer, "A", at=T1)

    event = only_new_event(customer)
    assert event.tier == "A" and event.previous_tier == "B"


@pytest.mark.parametrize("tier", ["E", "a", "", None])
def test_an_unknown_tier_cannot_be_assigned(tier):
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        assign(customer, tier)
    assert customer.collect_events() == []
    assert customer.tier is None


def test_a_tier_assignment_without_a_reason_is_refused():
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        customer.assign_tier(tier="A", score=None, indicators={}, policy_version=1, reason=" ",
                             run_id=None, occurred_at=T0, actor=ACTOR)
    assert customer.collect_events() == []


# --- override_tier ----------------------------------------------------------------------------

def test_a_tier_override_records_tier_reason_approver_expiry_and_the_tier_it_replaces():
    customer = given_customer()
    assign(customer, "C")
    customer.collect_events()

    override(customer, "A", reason=" strategic ", approved_by=" Dana ", expires_on=date(2026, 3, 1))

    event = only_new_event(customer)
    assert type(event) is Customer.TierOverridden
    assert (event.tier, event.previous_tier) == ("A", "C")
    assert (event.reason, event.approved_by) == ("strategic", "Dana")
    assert event.expires_on == date(2026, 3, 1)


@pytest.mark.parametrize("missing", ["reason", "approved_by"])
def test_a_tier_override_needs_a_reason_and_an_approver(missing):
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        override(customer, **{missing: "  "})
    assert customer.collect_events() == []
    assert customer.override is None


def test_an_override_to_an_unknown_tier_is_refused():
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        override(customer, "Z")
    assert customer.collect_events() == []


@pytest.mark.parametrize("expires_on", [T0.date(), T0.date() - timedelta(days=1)])
def test_an_override_that_expires_on_or_before_its_own_date_is_refused(expires_on):
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        override(customer, expires_on=expires_on)
    assert customer.collect_events() == []


def test_an_override_that_expires_the_next_day_is_accepted():
    customer = given_customer()

    override(customer, expires_on=T0.date() + timedelta(days=1))

    assert only_new_event(customer).expires_on == date(2026, 1, 6)


@pytest.mark.parametrize(("day", "expected"), [
    (date(2026, 1, 5), "A"),    # the override's own day
    (date(2026, 2, 28), "A"),   # the day before expiry
    (date(2026, 3, 1), "C"),    # the expiry day: back to the assigned tier
    (date(2026, 6, 1), "C"),    # long after
])
def test_an_override_applies_until_its_expiry_day_then_the_assigned_tier_applies(day, expected):
    customer = given_customer()
    assign(customer, "C")
    override(customer, "A", expires_on=date(2026, 3, 1))

    assert customer.effective_tier(day) == expected


def test_an_override_without_expiry_applies_indefinitely_even_over_later_assignments():
    customer = given_customer()
    override(customer, "A")
    assign(customer, "D", at=T1)

    assert customer.effective_tier(date(2036, 1, 1)) == "A"
    assert customer.tier == "D"


def test_an_expired_override_is_not_the_previous_tier_of_the_next_override():
    customer = given_customer()
    assign(customer, "C")
    override(customer, "A", expires_on=date(2026, 2, 1))
    customer.collect_events()

    override(customer, "B", at=datetime(2026, 2, 1, 9, 0, tzinfo=timezone.utc))

    assert only_new_event(customer).previous_tier == "C"


def test_the_tier_of_a_deactivated_customer_cannot_be_overridden():
    customer = given_customer()
    customer.deactivate(reason=None, occurred_at=T0, actor=ACTOR)
    customer.collect_events()

    with pytest.raises(CustomerInactiveError):
        override(customer, "A", at=T1)
    assert customer.collect_events() == []


# --- deactivate / reactivate ------------------------------------------------------------------

def test_deactivating_an_active_customer_records_the_reason():
    customer = given_customer()

    customer.deactivate(reason="  went bust ", occurred_at=T1, actor=ACTOR)

    event = only_new_event(customer)
    assert type(event) is Customer.Deactivated and event.reason == "went bust"
    assert customer.active is False


def test_deactivating_twice_is_refused():
    customer = given_customer()
    customer.deactivate(reason=None, occurred_at=T0, actor=ACTOR)
    customer.collect_events()

    with pytest.raises(CustomerInactiveError):
        customer.deactivate(reason=None, occurred_at=T1, actor=ACTOR)
    assert customer.collect_events() == []


def test_reactivating_a_deactivated_customer_records_it():
    customer = given_customer()
    customer.deactivate(reason=None, occurred_at=T0, actor=ACTOR)
    customer.collect_events()

    customer.reactivate(occurred_at=T1, actor=ACTOR)

    assert type(only_new_event(customer)) is Customer.Reactivated
    assert customer.active is True


def test_reactivating_an_active_customer_is_refused():
    customer = given_customer()

    with pytest.raises(RuleViolationError):
        customer.reactivate(occurred_at=T1, actor=ACTOR)
    assert customer.collect_events() == []


# --- erase_personal_data ----------------------------------------------------------------------

def test_erasing_personal_data_blanks_the_profile_but_keeps_business_facts():
    customer = given_customer(email="jo@acme.example", phone="123", birthday=date(1980, 5, 6),
                              special_days=[{"label": "Anniversary", "date": date(2010, 1, 1)}],
                              industry="Retail", region="North")
    assign(customer, "B")
    customer.record_visit(visited_on=date(2026, 1, 5), by="Sam", notes=None, occurred_at=T0,
                          actor=ACTOR)
    customer.collect_events()

    customer.erase_personal_data(reason="GDPR request 42", occurred_at=T1, actor=ACTOR)

    event = only_new_event(customer)
    assert type(event) is Customer.PersonalDataErased and event.reason == "GDPR request 42"
    assert customer.erased is True
    assert customer.profile["name"] == "[erased]"
    assert customer.profile["email"] is None and customer.profile["phone"] is None
    assert customer.profile["birthday"] is None and customer.profile["special_days"] == []
    assert customer.tier == "B" and len(customer.visits) == 1
    assert customer.profile["industry"] == "Retail" and customer.profile["region"] == "North"


def test_the_profile_of_an_erased_customer_cannot_be_updated():
    customer = given_customer()
    customer.erase_personal_data(reason="GDPR", occurred_at=T0, actor=ACTOR)
    customer.collect_events()

    with pytest.raises(CustomerErasedError):
        customer.update_profile({"name": "Back again"}, occurred_at=T1, actor=ACTOR)
    assert customer.collect_events() == []
    assert customer.profile["name"] == "[erased]"


def test_erasing_personal_data_twice_is_refused():
    customer = given_customer()
    customer.erase_personal_data(reason="GDPR", occurred_at=T0, actor=ACTOR)
    customer.collect_events()

    with pytest.raises(CustomerErasedError):
        customer.erase_personal_data(reason="GDPR again", occurred_at=T1, actor=ACTOR)
    assert customer.collect_events() == []


def test_erasing_personal_data_without_a_reason_is_refused():
    customer = given_customer()

    with pytest.raises(InvalidValueError):
        customer.erase_personal_data(reason="", occurred_at=T1, actor=ACTOR)
    assert customer.collect_events() == []
    assert customer.erased is False


# --- replay -----------------------------------------------------------------------------------

def test_a_customer_rebuilt_from_its_events_matches_the_live_one():
    live = register(email="jo@acme.example")
    live.update_profile({"region": "South"}, occurred_at=T0, actor=ACTOR)
    live.record_visit(visited_on=date(2026, 1, 5), by="Sam", notes=None, occurred_at=T0, actor=ACTOR)
    assign(live, "C")
    override(live, "A", expires_on=date(2026, 3, 1))
    live.deactivate(reason=None, occurred_at=T1, actor=ACTOR)
    live.reactivate(occurred_at=T1, actor=ACTOR)
    live.erase_personal_data(reason="GDPR", occurred_at=T1, actor=ACTOR)
    events = live.collect_events()

    rebuilt = None
    for event in events:
        rebuilt = event.mutate(rebuilt)

    assert len(events) == 8
    assert rebuilt.id == live.id and rebuilt.version == live.version == 8
    assert rebuilt.profile == live.profile
    assert rebuilt.profile["region"] == "South" and rebuilt.profile["name"] == "[erased]"
    assert (rebuilt.active, rebuilt.erased, rebuilt.tier) == (True, True, "C")
    assert rebuilt.visits == live.visits
    assert rebuilt.override == live.override == {"tier": "A", "expires_on": date(2026, 3, 1)}
    assert rebuilt.effective_tier(date(2026, 2, 1)) == "A"


def test_the_tier_at_an_instant_follows_assignments_and_unexpired_overrides():
    customer = given_customer()
    assign(customer, "C", at=T0)
    customer.override_tier(tier="A", reason="key account", approved_by="cfo", expires_on=date(2026, 2, 1),
                           occurred_at=T0 + timedelta(days=10), actor=ACTOR)
    assign(customer, "B", at=T0 + timedelta(days=20))
    assert customer.tier_at(T0 - timedelta(days=1)) is None                 # before any tier
    assert customer.tier_at(T0 + timedelta(days=5)) == "C"                  # assigned
    assert customer.tier_at(T0 + timedelta(days=15)) == "A"                 # override in force
    assert customer.tier_at(T0 + timedelta(days=22)) == "A"                 # a run does not beat the override
    assert customer.tier_at(datetime(2026, 2, 1, tzinfo=timezone.utc)) == "B"  # expired on its date


def test_the_tier_at_an_instant_survives_replay():
    customer = register()
    assign(customer, "B", at=T0)
    override(customer, "A", at=T1, expires_on=date(2026, 3, 1))
    rebuilt = None
    for event in customer.collect_events():
        rebuilt = event.mutate(rebuilt)
    assert rebuilt is not None
    for when in (T0, T1, datetime(2026, 3, 2, tzinfo=timezone.utc)):
        assert rebuilt.tier_at(when) == customer.tier_at(when)
    assert rebuilt.tier_at(T1) == "A"
