"""The audit schema in PostgreSQL: the hash chain, its checkpoints, customer links, the access log.

Nothing here touches the event store's own table; the chain follows it like a projection.
"""

from __future__ import annotations

import weakref
from typing import Any

from psycopg import sql
from psycopg_pool import ConnectionPool

from crm.infra.event_store import CrmEventStore

SCHEMA = "audit"
APP = CrmEventStore.name
# The library names a tracking table after its environment: `audit` -> audit.audit_tracking.
TRACKING_ENV = "audit"
TRACKING = sql.Identifier(SCHEMA, f"{TRACKING_ENV}_tracking")
CHAIN = sql.Identifier(SCHEMA, "chain")
CHECKPOINTS = sql.Identifier(SCHEMA, "checkpoints")
LINKS = sql.Identifier(SCHEMA, "customer_links")
ACCESS_LOG = sql.Identifier(SCHEMA, "access_log")
_LOCK_KEY = 0x6372_6D61_7564  # "crmaud": serialises concurrent first-time DDL

DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    # One row per chained event: hash = sha256(previous hash + canonical content); seq counts events.
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.chain (position bigint PRIMARY KEY, seq bigint NOT NULL, "
    "hash bytea NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.checkpoints (position bigint PRIMARY KEY, seq bigint NOT NULL, "
    "hash bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    # Which orders and complaints refer to a customer (from Order.Placed / Complaint.Filed).
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.customer_links (customer_id uuid NOT NULL, aggregate_id uuid NOT NULL, "
    "position bigint NOT NULL, PRIMARY KEY (customer_id, aggregate_id))",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.access_log (id bigserial PRIMARY KEY, "
    "at timestamptz NOT NULL DEFAULT now(), actor text NOT NULL, role text NOT NULL, "
    "method text NOT NULL, path text NOT NULL, query text NOT NULL)",
)

_ensured: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


def create_tables(curs: Any) -> None:
    """Create the audit tables if missing (inside the caller's transaction)."""
    curs.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    for statement in DDL:
        curs.execute(statement)


def ensure_schema(pool: ConnectionPool) -> None:
    """Create the audit tables once per pool (cheap to call on every request)."""
    if pool in _ensured:
        return
    with pool.connection() as conn, conn.transaction():
        create_tables(conn.cursor())
    _ensured.add(pool)


def events_table(store: CrmEventStore) -> sql.Identifier:
    """The library's events table (schema-qualified), as the store's recorder names it."""
    recorder: Any = store.recorder
    return sql.Identifier(recorder.datastore.schema or "public", recorder.events_table_name)


def chained_position(curs: Any) -> int:
    """The position up to which the chain follower has hashed the log (0 before it ever ran).

    Read from the follower's tracking row, not from the chain table, so rows deleted from the
    end of the chain are noticed. `curs` is a psycopg cursor returning tuples."""
    curs.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{TRACKING_ENV}_tracking",))
    if not curs.fetchone()[0]:
        return 0
    curs.execute(sql.SQL("SELECT max(notification_id) FROM {} WHERE application_name = %s").format(TRACKING), (APP,))
    return curs.fetchone()[0] or 0
