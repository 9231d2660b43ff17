"""The SLA saga's rules: which deadlines each complaint event sets or cancels (pure).

A complaint has at most two pending deadlines: its warning mark and its due time. Filing,
resuming and reopening set both (to the times the event carries); waiting for the customer,
resolving and closing cancel both; a recorded warning or breach cancels its own. The saga
fires a deadline by a command on the Complaint, which accepts each mark once, so a deadline
fired twice (after a crash, or by two saga processes) is still recorded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

WARNING, BREACH = "warning", "breach"


@dataclass(frozen=True)
class SetDeadline:
    complaint_id: UUID
    kind: str
    due_at: datetime


@dataclass(frozen=True)
class CancelDeadline:
    complaint_id: UUID
    kind: str


def deadline_changes(event: Any) -> list[SetDeadline | CancelDeadline]:
    """What a complaint event does to its pending deadlines (other events: nothing)."""
    name, complaint = type(event).__name__, event.originator_id
    if type(event).__qualname__.split(".")[0] != "Complaint":
        return []
    if name in ("Filed", "Resumed", "Reopened"):
        return [SetDeadline(complaint, WARNING, event.warn_at), SetDeadline(complaint, BREACH, event.due_at)]
    if name in ("AwaitingCustomer", "Resolved", "Closed"):
        return [CancelDeadline(complaint, WARNING), CancelDeadline(complaint, BREACH)]
    if name == "SlaWarningIssued":
        return [CancelDeadline(complaint, WARNING)]
    if name == "SlaBreached":
        return [CancelDeadline(complaint, BREACH)]
    return []
