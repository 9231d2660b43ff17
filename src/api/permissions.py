"""Which roles may do what: one table, read by every route and by the access tests."""

from __future__ import annotations

ADMIN, AGENT, SALES, AUDITOR, CUSTOMER = "admin", "agent", "sales", "auditor", "customer"

PERMISSIONS: dict[str, frozenset[str]] = {
    "customers.write": frozenset({ADMIN, SALES}),
    "customers.erase": frozenset({ADMIN}),
    "products.write": frozenset({ADMIN}),
    "orders.write": frozenset({ADMIN, SALES}),
    "complaints.file": frozenset({ADMIN, AGENT, CUSTOMER}),
    "complaints.rate": frozenset({ADMIN, AGENT, CUSTOMER}),
    "complaints.handle": frozenset({ADMIN, AGENT}),
    "customers.read": frozenset({ADMIN, SALES, AGENT, AUDITOR}),
    "complaints.read": frozenset({ADMIN, SALES, AGENT, AUDITOR}),
    "reports.read": frozenset({ADMIN, SALES, AGENT, AUDITOR}),
    "tiering.manage": frozenset({ADMIN}),
    "audit.read": frozenset({ADMIN, AUDITOR}),
    "audit.admin": frozenset({ADMIN}),
    "sla.manage": frozenset({ADMIN}),
    # Self-service: a customer key reads its own orders and complaints (checked per route).
    "own.read": frozenset({ADMIN, SALES, AGENT, AUDITOR, CUSTOMER}),
}
