"""Audit, the public face: the access log, and the functions the `crm audit` commands call.

The parts live beside it: audit_chain (the hash-chain follower and checkpoints), audit_verify
(recomputing the chain), audit_history (history and as-of replay from the event store).
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from crm.infra.audit_chain import ChainerThread, HashChainer, export_checkpoint
from crm.infra.audit_history import customer_as_of, customer_registered, history
from crm.infra.audit_schema import ACCESS_LOG, ensure_schema
from crm.infra.audit_verify import BadCheckpointError, VerifyReport, verify
from crm.infra.runtime import Runtime

__all__ = ["ChainerThread", "HashChainer", "VerifyReport", "BadCheckpointError", "access_log", "customer_as_of",
           "customer_registered", "export_checkpoint", "history", "log_access", "print_checkpoint",
           "print_history", "print_verify", "run_chainer", "start_chainer", "verify"]
MAX_ACCESS_ROWS = 1_000


def log_access(pool: ConnectionPool, *, actor: str, role: str, method: str, path: str, query: str) -> None:
    """Record one audit read: who (the caller's actor name), what (path and query), when (now)."""
    ensure_schema(pool)
    with pool.connection() as conn:
        conn.execute(sql.SQL("INSERT INTO {} (actor, role, method, path, query) VALUES (%s, %s, %s, %s, %s)")
                     .format(ACCESS_LOG), (actor, role, method, path, query))


def access_log(pool: ConnectionPool, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit reads first."""
    ensure_schema(pool)
    query = sql.SQL("SELECT id, at, actor, role, method, path, query FROM {} ORDER BY id DESC LIMIT %s")
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as curs:
        return curs.execute(query.format(ACCESS_LOG), (min(limit, MAX_ACCESS_ROWS),)).fetchall()


def start_chainer(runtime: Runtime) -> ChainerThread:
    """The chain follower as a thread (for `crm up`); stop() it on the way out."""
    return ChainerThread(HashChainer(runtime.store, runtime.database_url)).start()


def run_chainer(runtime: Runtime) -> None:
    """`crm audit chain`: follow the log and extend the hash chain until Ctrl-C (production runs it alone)."""
    start_chainer(runtime).run_until_interrupted()


def _log_cli(runtime: Runtime, what: str) -> None:
    log_access(runtime.pool, actor=f"cli:{getpass.getuser()}", role="cli", method="CLI", path=what, query="")


def print_history(runtime: Runtime, customer_id: UUID, out: TextIO, *, jsonl: bool = False) -> int:
    """`crm audit history CUSTOMER [--jsonl]`: the history as a JSON array (or JSON Lines); exit code."""
    _log_cli(runtime, f"audit history {customer_id}")
    if not customer_registered(runtime.store, runtime.pool, customer_id):
        print(f"no customer with id {customer_id}", file=out)
        return 1
    separator = "" if jsonl else "["
    for entry in history(runtime.store, runtime.pool, customer_id):
        out.write(separator + entry.decode())
        separator = "\n" if jsonl else ",\n"
    out.write("\n" if jsonl else ("]\n" if separator != "[" else "[]\n"))
    return 0


def print_verify(runtime: Runtime, out: TextIO, checkpoint_file: Path | None = None) -> int:
    """`crm audit verify [--from-checkpoint FILE]`: the report as JSON; exit 0 ok, 1 broken, 2 bad file."""
    _log_cli(runtime, "audit verify" + (f" --from-checkpoint {checkpoint_file}" if checkpoint_file else ""))
    try:
        checkpoint = json.loads(checkpoint_file.read_text()) if checkpoint_file else None
        report = verify(runtime.store, runtime.pool, checkpoint)
    except (ValueError, AttributeError) as error:  # not JSON, or not a checkpoint export_checkpoint wrote
        print(f"not a checkpoint file: {error}", file=out)
        return 2
    print(json.dumps(report.as_dict(), indent=2), file=out)
    return 0 if report.ok else 1


def print_checkpoint(runtime: Runtime, out: TextIO, position: int | None = None) -> int:
    """`crm audit checkpoint [--position N]`: the latest checkpoint as JSON, to keep off this system."""
    _log_cli(runtime, "audit checkpoint")
    document = export_checkpoint(runtime.pool, position)
    if document is None:
        print("no checkpoint yet (one is written every 1,000 chained events)", file=out)
        return 1
    print(json.dumps(document, indent=2), file=out)
    return 0
