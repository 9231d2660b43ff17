"""Complaint read models: the queue with SLA marks, the timeline of every step, resolutions as SLA facts."""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any, Callable

from crm.aggregates.complaint import Complaint
from crm.aggregates.customer import Customer
from crm.projections.base import ReadModelProjection, Write, as_json

COMMON = {"originator_id", "originator_version", "timestamp", "originator_topic", "occurred_at", "actor"}


def _set(sets: str, **params: Any) -> Callable[[Any], tuple[str, dict[str, Any]]]:
    return lambda e: (sets, {k: getattr(e, v) if isinstance(v, str) else v(e) for k, v in params.items()})


# Event name -> what it changes on the complaint row (the step itself is always recorded).
ROW_CHANGES: dict[str, Callable[[Any], tuple[str, dict[str, Any]]]] = {
    "Assigned": _set("assignee = %(a)s, status = 'in_progress'", a="assignee"),
    "Escalated": _set("escalations = %(level)s", level="level"),
    "AwaitingCustomer": _set("status = 'awaiting_customer', awaiting_since = %(at)s", at="occurred_at"),
    "Resumed": _set("status = CASE WHEN assignee IS NULL THEN 'open' ELSE 'in_progress' END, "
                    "awaiting_since = NULL, due_at = %(due)s, warn_at = %(warn)s", due="due_at", warn="warn_at"),
    "SlaWarningIssued": _set("warned_at = %(at)s", at="occurred_at"),
    "SlaBreached": _set("breached_at = %(at)s, breaches = breaches + 1", at="occurred_at"),
    "Resolved": _set("status = 'resolved', resolved_at = %(at)s, resolved_by = %(by)s, resolution = %(r)s, "
                     "root_cause = %(rc)s, on_time = %(ok)s", at="occurred_at", by="by", r="resolution",
                     rc="root_cause", ok="on_time"),
    "ResolutionConfirmed": _set("status = 'confirmed', confirmed_at = %(at)s", at="occurred_at"),
    "CustomerNotified": _set("notified_at = %(at)s", at="occurred_at"),
    "Rated": _set("rating = %(score)s, rating_comment = %(comment)s", score="score", comment="comment"),
    "Reopened": _set("status = CASE WHEN assignee IS NULL THEN 'open' ELSE 'in_progress' END, "
                     "reopen_count = reopen_count + 1, clock_started_at = %(at)s, due_at = %(due)s, "
                     "warn_at = %(warn)s, resolved_at = NULL, resolution = NULL, root_cause = NULL, "
                     "on_time = NULL, confirmed_at = NULL, rating = NULL, rating_comment = NULL, "
                     "warned_at = NULL, breached_at = NULL", at="occurred_at", due="due_at", warn="warn_at"),
    "Closed": _set("status = 'closed', closed_at = %(at)s", at="occurred_at"),
}


class ComplaintsProjection(ReadModelProjection):
    """Complaints with their current SLA marks, every step with actor and time, each resolution."""

    name = "complaints"
    schema = "read_complaints"
    tables = {
        "complaints": """id uuid PRIMARY KEY, customer_id uuid NOT NULL, order_id uuid, sku text,
            category text NOT NULL, description text NOT NULL, channel text, tier text, status text NOT NULL,
            assignee text, filed_at timestamptz NOT NULL, clock_started_at timestamptz NOT NULL,
            due_at timestamptz NOT NULL, warn_at timestamptz NOT NULL, escalations integer NOT NULL DEFAULT 0,
            awaiting_since timestamptz, warned_at timestamptz, breached_at timestamptz,
            breaches integer NOT NULL DEFAULT 0, resolved_at timestamptz, resolved_by text, resolution text,
            root_cause text, on_time boolean, confirmed_at timestamptz, notified_at timestamptz,
            rating integer, rating_comment text, reopen_count integer NOT NULL DEFAULT 0,
            closed_at timestamptz, version integer NOT NULL""",
        "complaint_steps": """event_id text PRIMARY KEY, complaint_id uuid NOT NULL, version integer NOT NULL,
            type text NOT NULL, actor text NOT NULL, occurred_at timestamptz NOT NULL,
            recorded_at timestamptz NOT NULL, details jsonb NOT NULL""",
        "resolutions": """event_id text PRIMARY KEY, complaint_id uuid NOT NULL, tier text, assignee text,
            clock_started_at timestamptz NOT NULL, resolved_at timestamptz NOT NULL, on_time boolean NOT NULL,
            resolved_by text NOT NULL""",
    }
    indexes = (
        "CREATE INDEX IF NOT EXISTS complaints_queue ON complaints (status, tier, due_at)",
        "CREATE INDEX IF NOT EXISTS complaints_customer ON complaints (customer_id, filed_at)",
        "CREATE INDEX IF NOT EXISTS complaints_customer_sku ON complaints (customer_id, sku)",
        "CREATE INDEX IF NOT EXISTS complaints_assignee ON complaints (assignee)",
        "CREATE INDEX IF NOT EXISTS complaint_steps_complaint ON complaint_steps (complaint_id, version)",
        "CREATE INDEX IF NOT EXISTS complaint_steps_type ON complaint_steps (type, occurred_at)",
        "CREATE INDEX IF NOT EXISTS resolutions_resolved ON resolutions (resolved_at)",
    )

    @singledispatchmethod
    def writes_for(self, domain_event: Any) -> list[Write]:
        return []  # not an event this read model needs; its position is still tracked

    @writes_for.register
    def _(self, event: Complaint.Event) -> list[Write]:
        name = type(event).__name__
        writes = [_filed(event)] if name == "Filed" else []
        if name in ROW_CHANGES:
            sets, params = ROW_CHANGES[name](event)
            writes.append(Write(f"UPDATE complaints SET {sets}, version = %(v)s WHERE id = %(id)s",
                                {**params, "id": event.originator_id, "v": event.originator_version}))
        elif name != "Filed":
            writes.append(Write("UPDATE complaints SET version = %(v)s WHERE id = %(id)s",
                                {"id": event.originator_id, "v": event.originator_version}))
        if name == "Resolved":
            writes.append(_resolution(event))
        writes.append(_step(event, name))
        return writes

    @writes_for.register
    def _(self, event: Customer.PersonalDataErased) -> list[Write]:
        # The address a resolution e-mail went to is the customer's personal data too.
        return [Write("""UPDATE complaint_steps SET details = details || '{"address": "[erased]"}'::jsonb
                          WHERE type = 'CustomerNotified' AND complaint_id IN
                                (SELECT id FROM complaints WHERE customer_id = %(id)s)""",
                      {"id": event.originator_id})]


def _filed(event: Any) -> Write:
    return Write("""INSERT INTO complaints (id, customer_id, order_id, sku, category, description, channel, tier,
        status, filed_at, clock_started_at, due_at, warn_at, version) VALUES (%(id)s, %(customer)s, %(order)s,
        %(sku)s, %(category)s, %(description)s, %(channel)s, %(tier)s, 'open', %(at)s, %(at)s, %(due)s, %(warn)s,
        %(v)s)""", {"id": event.originator_id, "customer": event.customer_id, "order": event.order_id,
                    "sku": event.sku, "category": event.category, "description": event.description,
                    "channel": event.channel, "tier": event.tier, "at": event.occurred_at, "due": event.due_at,
                    "warn": event.warn_at, "v": event.originator_version})


def _resolution(event: Any) -> Write:
    return Write("""INSERT INTO resolutions (event_id, complaint_id, tier, assignee, clock_started_at, resolved_at,
        on_time, resolved_by) SELECT %(e)s, id, tier, assignee, clock_started_at, %(at)s, %(ok)s, %(by)s
        FROM complaints WHERE id = %(id)s""",
                 {"e": f"{event.originator_id}:{event.originator_version}", "id": event.originator_id,
                  "at": event.occurred_at, "ok": event.on_time, "by": event.by})


def _step(event: Any, name: str) -> Write:
    details = {k: v for k, v in vars(event).items() if k not in COMMON}
    return Write("""INSERT INTO complaint_steps (event_id, complaint_id, version, type, actor, occurred_at,
        recorded_at, details) VALUES (%(e)s, %(id)s, %(v)s, %(type)s, %(actor)s, %(at)s, %(rec)s, %(details)s)""",
                 {"e": f"{event.originator_id}:{event.originator_version}", "id": event.originator_id,
                  "v": event.originator_version, "type": name, "actor": event.actor, "at": event.occurred_at,
                  "rec": event.timestamp, "details": as_json(details)}, append_only=True)
