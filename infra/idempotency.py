"""Idempotency keys: a repeated POST gets the first response; the same key with another body is 409."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

SCHEMA = """
CREATE TABLE IF NOT EXISTS crm_idempotency_keys (
    principal    text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status       integer,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
)
"""


class ClaimState(enum.Enum):
    NEW = "new"                  # first use: run the request, then complete() or release()
    REPLAY = "replay"            # same key, same request, finished: send the stored response
    MISMATCH = "mismatch"        # same key, different request: 409
    IN_PROGRESS = "in_progress"  # same key, first request still running (or it crashed): 409


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    status: int | None = None
    body: bytes | None = None


class IdempotencyStore:
    """Keys are scoped per API key, so two clients never see each other's responses."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def create_schema(self) -> None:
        with self.pool.connection() as conn:
            conn.execute(SCHEMA)

    def claim(self, principal: str, key: str, request_hash: str) -> Claim:
        with self.pool.connection() as conn:
            inserted = conn.execute(
                "INSERT INTO crm_idempotency_keys (principal, key, request_hash) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING 1", (principal, key, request_hash)).fetchone()
            if inserted:
                return Claim(ClaimState.NEW)
            row = conn.execute(
                "SELECT request_hash, status, body FROM crm_idempotency_keys WHERE principal = %s AND key = %s",
                (principal, key)).fetchone()
        if row is None:  # released between our insert and select: treat as new next time
            return Claim(ClaimState.IN_PROGRESS)
        stored_hash, status, body = row
        if stored_hash != request_hash:
            return Claim(ClaimState.MISMATCH)
        if status is None:
            return Claim(ClaimState.IN_PROGRESS)
        return Claim(ClaimState.REPLAY, status, bytes(body))

    def complete(self, principal: str, key: str, status: int, body: bytes) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE crm_idempotency_keys SET status = %s, body = %s WHERE principal = %s AND key = %s",
                         (status, body, principal, key))

    def release(self, principal: str, key: str) -> None:
        """A rejected request changes nothing, so its key may be used again."""
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM crm_idempotency_keys WHERE principal = %s AND key = %s AND status IS NULL",
                         (principal, key))
