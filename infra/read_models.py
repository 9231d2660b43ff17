"""Read models in PostgreSQL: one schema per projection, holding its tables and its tracking row.

Live: the library's ProjectionRunner feeds each event to the projection, whose view writes the
tracking position first (the library refuses a position that does not advance, so an event is
never applied twice) and then the rows, in one transaction with synchronous_commit off (a crash
loses both together; the runner then replays them). Rebuild: the same writes, thousands of events
per transaction, into `<schema>_next`; then a swap that catches up under a lock on the live
tracking table, drops the live schema and renames the new one, so the API keeps serving.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable, Sequence

import structlog
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import ProjectionRunner
from psycopg import sql

from crm.infra.event_store import CrmEventStore
from crm.infra.postgres import eventsourcing_env
from crm.projections import PROJECTIONS
from crm.projections.base import ReadModelProjection, Write

log = structlog.get_logger(__name__)
APP = CrmEventStore.name


class ProjectionView(PostgresTrackingRecorder):
    """The library's tracking recorder, plus the projection's own tables in the same schema."""

    projection: type[ReadModelProjection]

    def create_table(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.datastore.schema)))
        super().create_table()
        with self.datastore.transaction(commit=True) as curs:
            self._use_schema(curs)
            for table, columns in self.projection.tables.items():
                curs.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")  # static text, not input
            for statement in self.projection.indexes:
                curs.execute(statement)

    def _use_schema(self, curs: Any) -> None:
        curs.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(self.datastore.schema)))

    def apply(self, writes: Sequence[Write], tracking: Tracking) -> None:
        """One event: tracking first (refused if not advancing), then its rows, one transaction."""
        try:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute("SET LOCAL synchronous_commit = off")
                self._use_schema(curs)
                self._insert_tracking(curs, tracking)
                for write in writes:
                    curs.execute(write.sql, write.params)
        except IntegrityError:
            log.debug("projection.skip_applied", projection=self.projection.name, position=tracking.notification_id)

    def apply_batch(self, batch: Sequence[tuple[Sequence[Write], int]], curs: Any | None = None) -> None:
        """Many events in one transaction (rebuild): rows in order, then the last position."""
        if not batch:
            return
        if curs is not None:
            return self._write_batch(curs, batch)
        with self.datastore.transaction(commit=True) as curs:
            curs.execute("SET LOCAL synchronous_commit = off")
            self._write_batch(curs, batch)

    def _write_batch(self, curs: Any, batch: Sequence[tuple[Sequence[Write], int]], position: int | None = None) -> None:
        """Writes in log order (pipelined), then the append-only ones grouped per statement."""
        self._use_schema(curs)
        appends: dict[str, list[Any]] = {}
        with curs.connection.pipeline():
            for writes, _ in batch:
                for write in writes:
                    if write.append_only:
                        appends.setdefault(write.sql, []).append(write.params)
                    else:
                        curs.execute(write.sql, write.params)
            for statement, params in appends.items():
                curs.executemany(statement, params)
        self._insert_tracking(curs, Tracking(APP, position or batch[-1][1]))

    def advance(self, position: int, curs: Any | None = None) -> None:
        """Track a position with no rows to write (the log's head, past events this view ignores)."""
        if curs is not None:
            return self._insert_tracking(curs, Tracking(APP, position))
        self.insert_tracking(Tracking(APP, position))

    def position(self) -> int:
        return self.max_tracking_id(APP) or 0


def view_env(database_url: str, name: str, schema: str) -> dict[str, str]:
    # A runner needs few connections (its subscription, its view's writes); the library opens
    # POSTGRES_POOL_SIZE of them eagerly, so keep it small or three runners exhaust the server.
    return {**eventsourcing_env(database_url), f"{name.upper()}_POSTGRES_SCHEMA": schema,
            "POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": "3"}


def view_class(projection: type[ReadModelProjection]) -> type[ProjectionView]:
    return type(f"{projection.__name__}View", (ProjectionView,), {"projection": projection})


def open_view(database_url: str, projection: type[ReadModelProjection], schema: str | None = None) -> ProjectionView:
    """A view on the live schema (or another, for a rebuild); creates its tables when missing."""
    from eventsourcing.persistence import InfrastructureFactory
    from eventsourcing.utils import Environment

    env = Environment(projection.name, view_env(database_url, projection.name, schema or projection.schema))
    return InfrastructureFactory.construct(env=env).tracking_recorder(view_class(projection))


class Runners(dict[str, ProjectionRunner]):
    """name -> the library's ProjectionRunner for that projection, supervised: a runner stops on
    its first error (a database restart, say), so a watcher thread replaces one that stopped with
    a new runner, which resumes from the tracked position; it retries with backoff (0.5 s doubling
    to 2 s) while the database stays away and logs the outage once when it starts and once when
    it ends. Without it the read models would freeze until someone restarted crm."""

    def __init__(self, database_url: str, names: Iterable[str]) -> None:
        super().__init__({name: _start_runner(database_url, name) for name in names})
        self.database_url, self.stopping = database_url, threading.Event()
        self.errors: list[str] = []  # every error a runner stopped on, in order (tests assert none)
        self.watcher = threading.Thread(target=self._watch, name="projection-supervisor", daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        down: dict[str, float] = {}  # name -> when its outage began
        backoff: dict[str, float] = {}
        retry_at: dict[str, float] = {}
        while not self.stopping.wait(0.2):
            for name, runner in list(self.items()):
                if not runner.is_interrupted.is_set() or self.stopping.is_set():
                    continue
                if name not in down:
                    down[name], backoff[name], retry_at[name] = time.monotonic(), 0.5, 0.0
                    error = _error_of(runner)
                    self.errors.append(f"{name}: {error}")
                    log.warning("projection.stopped", projection=name, error=error)
                if time.monotonic() < retry_at[name]:
                    continue
                try:
                    replacement = _start_runner(self.database_url, name)
                except Exception:  # still away: try again later
                    retry_at[name] = time.monotonic() + backoff[name]
                    backoff[name] = min(backoff[name] * 2, 2.0)
                    continue
                _exit_quietly(runner)
                self[name] = replacement
                log.info("projection.resumed", projection=name, outage_s=round(time.monotonic() - down.pop(name), 1))

    def stop(self) -> None:
        self.stopping.set()
        self.watcher.join(timeout=10)
        for runner in self.values():
            _exit_quietly(runner)


def _start_runner(database_url: str, name: str) -> ProjectionRunner:
    projection = PROJECTIONS[name]
    runner = ProjectionRunner(application_class=CrmEventStore, projection_class=projection,
                              view_class=view_class(projection),
                              env=view_env(database_url, name, projection.schema))
    return runner.__enter__()  # the runner is a context manager; its __exit__ stops it


def _error_of(runner: ProjectionRunner) -> str | None:
    try:
        runner.run_forever(timeout=0)  # the library's way to surface the runner thread's error
    except Exception as error:
        return repr(error)[:300]
    return None


def _exit_quietly(runner: ProjectionRunner) -> None:
    try:
        runner.__exit__(None, None, None)
    except Exception:  # the error it stopped on was logged when the supervisor saw it
        pass


def start_runners(database_url: str, names: Iterable[str] | None = None) -> Runners:
    """Start the library's ProjectionRunner for each projection (each follows the log in a thread),
    supervised (see Runners)."""
    return Runners(database_url, names or PROJECTIONS)


def stop_runners(runners: dict[str, ProjectionRunner]) -> None:
    if isinstance(runners, Runners):
        runners.stop()
    else:
        for runner in runners.values():
            runner.__exit__(None, None, None)
