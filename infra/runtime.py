"""Wires settings into running parts: the database, the event store, the pool, the key ring."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import structlog
from psycopg_pool import ConnectionPool

from crm.infra.event_store import CrmEventStore, open_event_store
from crm.infra.idempotency import IdempotencyStore
from crm.infra.postgres import start_embedded
from crm.infra.read_store import PgReadStore
from crm.infra.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """Everything a process of crm holds open; close() releases it."""

    settings: Settings
    database_url: str
    store: CrmEventStore
    pool: ConnectionPool
    idempotency: IdempotencyStore
    reads: PgReadStore
    cursor_secret: bytes = field(repr=False, default=b"")
    policies: Any = None
    runs: Any = None
    api_keys: dict[str, str] = field(repr=False, default_factory=dict)
    generated_admin_key: str | None = field(repr=False, default=None)

    def close(self) -> None:
        self.pool.close()
        self.store.close()


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.data_dir)


def open_runtime(settings: Settings, *, generate_key: bool = True) -> Runtime:
    """Open the store and the pool (starting embedded PostgreSQL if no URL is set)."""
    url = resolve_database_url(settings)
    store = open_event_store(url)
    # Every session in UTC, so dates and years of timestamps mean UTC days in every query.
    pool = ConnectionPool(url, min_size=1, max_size=10, open=True, timeout=2, name="crm",
                          kwargs={"options": "-c TimeZone=UTC"})
    idempotency = IdempotencyStore(pool)
    idempotency.create_schema()
    keys, generated = settings.key_roles(), None
    if not keys and generate_key:
        generated = secrets.token_urlsafe(24)
        keys = {generated: "admin"}
    secret = cursor_secret(pool)
    ensure_read_models(url)
    from crm.infra.policies import PolicyStore
    from crm.infra.tiering_runs import RunStore

    return Runtime(settings, url, store, pool, idempotency, PgReadStore(pool), secret, PolicyStore(pool),
                   RunStore(pool), keys, generated)


def ensure_read_models(database_url: str) -> None:
    """Create every projection's schema and tables if missing, so queries (and the prevention check
    on orders) work on a new database even before any projection has run."""
    from crm.infra.read_models import open_view
    from crm.projections import PROJECTIONS

    for projection in PROJECTIONS.values():
        open_view(database_url, projection).datastore.close()


def cursor_secret(pool: ConnectionPool) -> bytes:
    """The key that signs pagination cursors, made once and shared by every API process."""
    with pool.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS crm_secrets (name text PRIMARY KEY, value bytea NOT NULL)")
        conn.execute("INSERT INTO crm_secrets VALUES ('cursor', %s) ON CONFLICT DO NOTHING", (secrets.token_bytes(32),))
        return bytes(conn.execute("SELECT value FROM crm_secrets WHERE name = 'cursor'").fetchone()[0])
