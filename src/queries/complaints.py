"""Complaint queries: the work queue (priority: tier A first, then earliest due) and the timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from crm.projections import ComplaintsProjection
from crm.queries.base import CursorCodec, Page, ReadStore, page
from crm.queries.customers import ComplaintBrief

K = ComplaintsProjection.schema
TIER_RANK = "coalesce(array_position(ARRAY['A','B','C','D'], tier), 5)"


def complaint_queue(reads: ReadStore, codec: CursorCodec, *, status: str | None, tier: str | None,
                    assignee: str | None, order: Literal["priority", "filed"], cursor: str | None,
                    limit: int) -> Page[ComplaintBrief]:
    """`priority`: tier A first (unrated last), then the earliest due; `filed`: oldest filed first."""
    listing = f"complaints:{order}"
    after = codec.decode(listing, cursor) if cursor else None
    key = (f"({TIER_RANK}, due_at, id)" if order == "priority" else "(filed_at, id)")
    after_key = ("(%(a0)s::int, %(a1)s::timestamptz, %(a2)s::uuid)" if order == "priority"
                 else "(%(a0)s::timestamptz, %(a1)s::uuid)")
    params: dict[str, Any] = {"status": status, "tier": tier, "assignee": assignee, "limit": limit + 1,
                              "has_after": after is not None}
    params.update({f"a{i}": v for i, v in enumerate(after or [None, None, None])})
    rows = reads.all(f"""SELECT id, category, status, tier, sku, filed_at, due_at, assignee,
            {TIER_RANK} AS tier_rank FROM {K}.complaints
        WHERE (%(status)s::text IS NULL OR status = %(status)s)
          AND (%(tier)s::text IS NULL OR coalesce(tier, 'unrated') = %(tier)s)
          AND (%(assignee)s::text IS NULL OR assignee = %(assignee)s)
          AND (NOT %(has_after)s OR {key} > {after_key})
        ORDER BY {key[1:-1]} LIMIT %(limit)s""", params)
    columns = ("tier_rank", "due_at", "id") if order == "priority" else ("filed_at", "id")
    rows, next_cursor = page(rows, limit, codec, listing, columns)
    return Page[ComplaintBrief](items=[ComplaintBrief(**r) for r in rows], next_cursor=next_cursor)


class Step(BaseModel):
    """One step of a complaint's timeline: what happened, who did it, when (business and recorded)."""

    version: int
    type: str
    actor: str
    occurred_at: datetime
    recorded_at: datetime
    details: dict[str, Any]


class SlaMarks(BaseModel):
    """The SLA clock as it stands: deadlines, whether warned or breached, whether paused."""

    due_at: datetime
    warn_at: datetime
    warned_at: datetime | None
    breached_at: datetime | None
    breaches: int
    paused_since: datetime | None
    overdue: bool


class ComplaintDetail(BaseModel):
    """A complaint's current state and its full timeline."""

    id: UUID
    version: int
    customer_id: UUID
    order_id: UUID | None
    sku: str | None
    category: str
    description: str
    channel: str | None
    tier: str | None
    status: str
    assignee: str | None
    escalations: int
    filed_at: datetime
    resolution: str | None
    root_cause: str | None
    resolved_at: datetime | None
    on_time: bool | None
    rating: int | None
    reopen_count: int
    sla: SlaMarks
    timeline: list[Step]


def complaint_detail(reads: ReadStore, complaint_id: UUID, now: datetime) -> ComplaintDetail | None:
    row = reads.one(f"SELECT * FROM {K}.complaints WHERE id = %(id)s", {"id": complaint_id})
    if row is None:
        return None
    steps = reads.all(f"""SELECT version, type, actor, occurred_at, recorded_at, details FROM {K}.complaint_steps
        WHERE complaint_id = %(id)s ORDER BY version""", {"id": complaint_id})
    active = row["status"] in ("open", "in_progress")
    sla = SlaMarks(due_at=row["due_at"], warn_at=row["warn_at"], warned_at=row["warned_at"],
                   breached_at=row["breached_at"], breaches=row["breaches"], paused_since=row["awaiting_since"],
                   overdue=active and now > row["due_at"])
    fields = {k: row[k] for k in ComplaintDetail.model_fields if k in row}
    return ComplaintDetail(**fields, sla=sla, timeline=[Step(**s) for s in steps])


def complaint_customer(reads: ReadStore, complaint_id: UUID) -> UUID | None:
    row = reads.one(f"SELECT customer_id FROM {K}.complaints WHERE id = %(id)s", {"id": complaint_id})
    return row["customer_id"] if row else None


def earlier_complaints(reads: ReadStore, customer_id: UUID, skus: list[str]) -> list[dict[str, Any]]:
    """This customer's complaints about any of these SKUs: named on the complaint, or on a line of
    the order it was filed about. One row per (complaint, SKU), oldest first (prevention)."""
    from crm.projections import SalesProjection

    return reads.all(f"""SELECT DISTINCT c.id AS complaint_id, s.sku, c.status, c.filed_at,
            c.category || ': ' || left(c.description, 200) AS summary, c.resolution
        FROM {K}.complaints c
        JOIN LATERAL (SELECT c.sku WHERE c.sku IS NOT NULL
                      UNION SELECT l.sku FROM {SalesProjection.schema}.order_lines l WHERE l.order_id = c.order_id) s
          ON true
        WHERE c.customer_id = %(customer)s AND s.sku = ANY(%(skus)s)
        ORDER BY c.filed_at, c.id, s.sku""", {"customer": customer_id, "skus": skus})
