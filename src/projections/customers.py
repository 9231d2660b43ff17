"""Customer read models: the customer list and 360 view, tier history, visits, special days."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

from crm.aggregates.customer import Customer
from crm.projections.base import ReadModelProjection, Write, as_json


def _resync_days(customer_id: Any) -> list[Write]:
    """Special days are re-derived from the row's own birthday and special_days."""
    return [Write("DELETE FROM special_days WHERE customer_id = %(id)s", {"id": customer_id}),
            Write(_DERIVE_DAYS, {"id": customer_id})]


def _touch(event: Any, sets: str = "", **params: Any) -> Write:
    """Move the row to the event's version and position, plus any other assignments."""
    extra = f", {sets}" if sets else ""
    return Write(f"UPDATE customers SET version = %(v)s{extra} WHERE id = %(id)s",
                 {"id": event.originator_id, "v": event.originator_version, **params})


class CustomersProjection(ReadModelProjection):
    """Customers as a list and a 360 view, every tier change, visits and special days."""

    name = "customers"
    schema = "read_customers"
    tables = {
        "customers": """id uuid PRIMARY KEY, name text NOT NULL, email text, phone text, industry text,
            region text, owner text, birthday date, special_days jsonb NOT NULL, active boolean NOT NULL,
            erased boolean NOT NULL DEFAULT false, tier text, score numeric, override_tier text,
            override_expires_on date, registered_at timestamptz NOT NULL, version integer NOT NULL""",
        "tier_history": """event_id text PRIMARY KEY, customer_id uuid NOT NULL, at timestamptz NOT NULL,
            recorded_at timestamptz NOT NULL, kind text NOT NULL, from_tier text, to_tier text NOT NULL,
            score numeric, indicators jsonb, policy_version integer, reason text NOT NULL, approved_by text,
            expires_on date, run_id text""",
        "visits": """event_id text PRIMARY KEY, customer_id uuid NOT NULL, visited_on date NOT NULL,
            by text NOT NULL""",
        "special_days": """customer_id uuid NOT NULL, label text NOT NULL, month integer NOT NULL,
            day integer NOT NULL, source_date date NOT NULL, PRIMARY KEY (customer_id, label, month, day)""",
    }
    indexes = (
        "CREATE INDEX IF NOT EXISTS customers_name ON customers (lower(name), id)",
        "CREATE INDEX IF NOT EXISTS customers_tier ON customers (tier)",
        "CREATE INDEX IF NOT EXISTS tier_history_customer ON tier_history (customer_id, at)",
        "CREATE INDEX IF NOT EXISTS tier_history_at ON tier_history (at)",
        "CREATE INDEX IF NOT EXISTS visits_customer ON visits (customer_id, visited_on)",
        "CREATE INDEX IF NOT EXISTS special_days_month_day ON special_days (month, day)",
    )

    @singledispatchmethod
    def writes_for(self, domain_event: Any) -> list[Write]:
        return []  # not an event this read model needs; its position is still tracked

    @writes_for.register
    def _(self, event: Customer.Registered) -> list[Write]:
        return [Write("""INSERT INTO customers (id, name, email, phone, industry, region, owner, birthday,
                special_days, active, registered_at, version) VALUES (%(id)s, %(name)s, %(email)s, %(phone)s,
                %(industry)s, %(region)s, %(owner)s, %(birthday)s, %(days)s, true, %(at)s, %(v)s)""",
                      {"id": event.originator_id, "name": event.name, "email": event.email, "phone": event.phone,
                       "industry": event.industry, "region": event.region, "owner": event.owner,
                       "birthday": event.birthday, "days": as_json(event.special_days),
                       "at": event.occurred_at, "v": event.originator_version}),
                *_resync_days(event.originator_id)]

    @writes_for.register
    def _(self, event: Customer.ProfileUpdated) -> list[Write]:
        changes = dict(event.changes)
        columns = {k: v for k, v in changes.items() if k != "special_days"}
        if "special_days" in changes:
            columns["special_days"] = as_json(changes["special_days"])
        sets = ", ".join(f"{column} = %({column})s" for column in columns)
        writes = [_touch(event, sets, **columns)]
        if "birthday" in changes or "special_days" in changes:
            writes.extend(_resync_days(event.originator_id))
        return writes

    @writes_for.register
    def _(self, event: Customer.VisitRecorded) -> list[Write]:
        return [_touch(event), Write(
            "INSERT INTO visits (event_id, customer_id, visited_on, by) VALUES (%(e)s, %(id)s, %(on)s, %(by)s)",
            {"e": f"{event.originator_id}:{event.originator_version}", "id": event.originator_id,
             "on": event.visited_on, "by": event.by}, append_only=True)]

    @writes_for.register
    def _(self, event: Customer.TierAssigned) -> list[Write]:
        return [_touch(event, "tier = %(tier)s, score = %(score)s", tier=event.tier, score=event.score),
                _history(event, "assigned", score=event.score, indicators=as_json(event.indicators),
                         policy_version=event.policy_version, run_id=event.run_id)]

    @writes_for.register
    def _(self, event: Customer.TierOverridden) -> list[Write]:
        return [_touch(event, "override_tier = %(tier)s, override_expires_on = %(exp)s", tier=event.tier,
                       exp=event.expires_on),
                _history(event, "override", approved_by=event.approved_by, expires_on=event.expires_on)]

    @writes_for.register
    def _(self, event: Customer.Deactivated) -> list[Write]:
        return [_touch(event, "active = false")]

    @writes_for.register
    def _(self, event: Customer.Reactivated) -> list[Write]:
        return [_touch(event, "active = true")]

    @writes_for.register
    def _(self, event: Customer.PersonalDataErased) -> list[Write]:
        return [_touch(event, "erased = true, name = '[erased]', email = NULL, phone = NULL, birthday = NULL, "
                              "special_days = '[]'::jsonb"),
                Write("DELETE FROM special_days WHERE customer_id = %(id)s", {"id": event.originator_id})]


_DERIVE_DAYS = """WITH c AS (SELECT id, birthday, special_days FROM customers WHERE id = %(id)s)
INSERT INTO special_days (customer_id, label, month, day, source_date)
SELECT c.id, d.label, extract(month FROM d.day)::int, extract(day FROM d.day)::int, d.day FROM c,
LATERAL (SELECT 'birthday' AS label, c.birthday AS day WHERE c.birthday IS NOT NULL
         UNION ALL SELECT s->>'label', (s->>'date')::date FROM jsonb_array_elements(c.special_days) s) d
ON CONFLICT DO NOTHING"""


def _history(event: Any, kind: str, **columns: Any) -> Write:
    base = {"e": f"{event.originator_id}:{event.originator_version}", "id": event.originator_id,
            "at": event.occurred_at, "rec": event.timestamp, "kind": kind, "from": event.previous_tier,
            "to": event.tier, "reason": event.reason}
    names = ", ".join(columns)
    values = ", ".join(f"%({name})s" for name in columns)
    return Write(f"""INSERT INTO tier_history (event_id, customer_id, at, recorded_at, kind, from_tier, to_tier,
        reason, {names}) VALUES (%(e)s, %(id)s, %(at)s, %(rec)s, %(kind)s, %(from)s, %(to)s, %(reason)s, {values})""",
                 {**base, **columns}, append_only=True)
