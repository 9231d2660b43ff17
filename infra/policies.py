"""Versioned policies (tiering, SLA): append-only rows; every change is a new version, kept forever."""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

P = TypeVar("P")
SCHEMA = """CREATE TABLE IF NOT EXISTS crm_policies (
    kind text NOT NULL, version integer NOT NULL, body jsonb NOT NULL, created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (kind, version))"""


class PolicyStore:
    """Policies by kind; version 0 is the built-in default, never stored."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        with pool.connection() as conn:
            conn.execute(SCHEMA)

    def current(self, kind: str, parse: Callable[[dict[str, Any]], P], default: P) -> P:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT version, body FROM crm_policies WHERE kind = %s ORDER BY version DESC LIMIT 1",
                               (kind,)).fetchone()
        return default if row is None else parse({**row[1], "version": row[0]})

    def define(self, kind: str, body: dict[str, Any], actor: str) -> int:
        """Store a new version (the caller validated it); concurrent definitions get distinct versions."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('crm_policies:' || %s))", (kind,))
            (latest,) = conn.execute("SELECT coalesce(max(version), 0) FROM crm_policies WHERE kind = %s",
                                     (kind,)).fetchone()
            conn.execute("INSERT INTO crm_policies (kind, version, body, created_by) VALUES (%s, %s, %s, %s)",
                         (kind, latest + 1, Jsonb(json.loads(json.dumps(body))), actor))
        return latest + 1
