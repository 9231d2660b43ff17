"""`crm rebuild`: replay the whole log into fresh tables, in batches, gather their planner
statistics, then swap them in."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from psycopg import sql
from tqdm import tqdm

from crm.infra.event_store import CrmEventStore
from crm.infra.read_models import ProjectionView, open_view
from crm.projections import PROJECTIONS
from crm.projections.base import ReadModelProjection

log = structlog.get_logger(__name__)
BATCH = 2_000


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild did: events it applied, the log position it reached, how long it took.
    Its rate counts the log's events covered (position / seconds): events a projection
    ignores are skipped by the store's topic filter, and that is part of the speed."""

    projection: str
    events: int
    position: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.position / self.seconds if self.seconds else 0.0


def rebuild(store: CrmEventStore, database_url: str, name: str, *, show_progress: bool = False,
            batch_size: int = BATCH) -> RebuildReport:
    """Rebuild one projection's read model from position 0 while the live one keeps serving."""
    projection = PROJECTIONS[name]
    started = time.perf_counter()
    _drop_schema(store, f"{projection.schema}_next")
    view = open_view(database_url, projection, f"{projection.schema}_next")
    try:
        writer = projection(view=view)
        head = store.position()
        events, position = 0, 0
        with tqdm(total=head, unit="ev", desc=f"rebuild {name}", disable=not show_progress) as bar:
            while batch := _read(store, writer, position, batch_size):
                view.apply_batch(batch)
                bar.update(batch[-1][1] - position)
                events, position = events + len(batch), batch[-1][1]
        if head > position:
            view.advance(head)  # events after the last one this projection handles
            position = head
        _analyze(view)
        caught_up, position = _swap(store, view, writer, projection, position, batch_size)
        events += caught_up
    finally:
        view.datastore.close()
    report = RebuildReport(name, events, position, time.perf_counter() - started)
    log.info("rebuild.done", projection=name, events=report.events, events_per_s=round(report.events_per_s))
    return report


def _read(store: CrmEventStore, writer: ReadModelProjection, after: int, limit: int) -> list[tuple[Any, int]]:
    """The next events this projection handles (the store filters by topic: nothing else is decoded)."""
    notifications = store.recorder.select_notifications(start=after + 1, limit=limit,
                                                        topics=writer.handled_topics())
    store.mapper.prefetch(notifications)  # type: ignore[attr-defined]
    return [(writer.writes(store.mapper.to_domain_event(n)), n.id) for n in notifications]


def _swap(store: CrmEventStore, view: ProjectionView, writer: ReadModelProjection,
          projection: type[ReadModelProjection], position: int, batch_size: int) -> tuple[int, int]:
    """Catch up under a lock that holds the live runner back, then replace the live schema.

    The head is read after the lock and before the last reads: every event up to it is then
    either applied here or one this projection ignores, so tracking it skips nothing."""
    live, fresh = sql.Identifier(projection.schema), sql.Identifier(view.datastore.schema)
    caught_up = 0
    with view.datastore.transaction(commit=True) as curs:
        curs.execute("SET LOCAL lock_timeout = '30s'")
        exists = curs.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (projection.schema,)).fetchone()
        if exists:
            tracking = sql.Identifier(f"{projection.name}_tracking")
            curs.execute(sql.SQL("LOCK TABLE {}.{} IN EXCLUSIVE MODE").format(live, tracking))
        head = store.position()
        while batch := _read(store, writer, position, batch_size):
            view.apply_batch(batch, curs=curs)
            caught_up, position = caught_up + len(batch), batch[-1][1]
        if head > position:
            view.advance(head, curs)
            position = head
        if exists:
            curs.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(live))
        curs.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(fresh, live))
    return caught_up, position


def _analyze(view: ProjectionView) -> None:
    """Planner statistics for the fresh tables before they go live. Tables filled in bulk have
    none until autovacuum gets round to them (a minute or more), and the planner guesses: a 360
    lookup cost 1.0 ms right after a rebuild and 0.6 ms after ANALYZE (BENCHMARKS.md). The
    statistics belong to the tables, so they survive the swap's rename."""
    schema = view.datastore.schema
    with view.datastore.transaction(commit=True) as curs:
        tables = [row["tablename"] for row in curs.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,)).fetchall()]
        for table in tables:
            curs.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))


def _drop_schema(store: CrmEventStore, schema: str) -> None:
    with store.recorder.datastore.transaction(commit=True) as curs:
        curs.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def checksums(store: CrmEventStore) -> dict[str, dict[str, str]]:
    """A digest of every read-model table (rows in a canonical order), for rebuild == incremental."""
    digests: dict[str, dict[str, str]] = {}
    with store.recorder.datastore.transaction(commit=False) as curs:
        for name, projection in PROJECTIONS.items():
            digests[name] = {}
            for table in projection.tables:
                query = sql.SQL("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) AS d "
                                "FROM {}.{} t").format(sql.Identifier(projection.schema), sql.Identifier(table))
                digests[name][table] = curs.execute(query).fetchone()["d"]
    return digests
