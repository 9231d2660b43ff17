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
from typing import Any, Iterable, Mapping, Sequence

import structlog
from eventsourcing.persistence import DataError, IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import ProjectionRunner
from psycopg import DataError as PgDataError, sql
from psycopg.types.json import Jsonb

from crm.infra.event_store import CrmEventStore
from crm.infra.postgres import eventsourcing_env
from crm.projections import PROJECTIONS
from crm.projections.base import ReadModelProjection, Write

log = structlog.get_logger(__name__)
APP = CrmEventStore.name


class _Group:
    """A live projection's events waiting to be written together (see ProjectionView.defer)."""

    def __init__(self) -> None:
        self.lock, self.wake = threading.Lock(), threading.Event()
        self.pending: list[tuple[Sequence[Write], int]] = []
        self.closed = False


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

    # Live, events are applied in groups: an event's writes wait in memory at most FLUSH_AFTER
    # (or until MAX_PENDING events have gathered), then the group is written in one transaction
    # that tracks its last position. One transaction per event per projection was the whole
    # system's bottleneck under load (a soak at 188 events/s left the projections behind by
    # 100+ events/s). Nothing is at risk: a crash loses only what was not committed, and the
    # runner replays it from the tracked position; read-your-writes waits at most FLUSH_AFTER more.
    FLUSH_AFTER = 0.01
    MAX_PENDING = 500

    def defer(self, writes: Sequence[Write], tracking: Tracking) -> None:
        """The live path (ReadModelProjection.process_event): queue the event's writes for the
        next group; a full group is written at once, in the caller's thread."""
        group = self._group()
        with group.lock:
            group.pending.append((writes, tracking.notification_id))
            if len(group.pending) >= self.MAX_PENDING:
                self._flush(group)  # raises, stopping the runner, if the database is away
                return
        group.wake.set()

    def flush(self) -> None:
        """Write what is pending now, in the caller's thread."""
        group = self.__dict__.get("_pending_group")
        if group is not None:
            with group.lock:
                if group.pending and not group.closed:
                    self._flush(group)

    def close_group(self) -> None:
        """Stop the flusher and forget what was not written (the next runner replays it)."""
        group = self.__dict__.get("_pending_group")
        if group is not None:
            with group.lock:  # after a flush in progress, none again
                group.closed = True
                group.pending.clear()
            group.wake.set()

    def _group(self) -> _Group:
        group = self.__dict__.get("_pending_group")
        if group is None:
            group = self.__dict__["_pending_group"] = _Group()
            threading.Thread(target=self._flusher, args=(group,), name=f"{self.projection.name}-flush",
                             daemon=True).start()
        return group

    def _flusher(self, group: _Group) -> None:
        backoff = 0.1
        while not group.closed:
            group.wake.wait()
            group.wake.clear()
            time.sleep(self.FLUSH_AFTER)  # let the group gather
            with group.lock:
                if group.closed or not group.pending:
                    continue
                try:
                    self._flush(group)
                    backoff, failed = 0.1, None
                except Exception as error:  # database away: keep the group, retry later
                    failed = error
            if failed is not None and not group.closed:
                log.warning("projection.flush_failed", projection=self.projection.name, error=repr(failed)[:200])
                group.wake.set()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _flush(self, group: _Group) -> None:
        """Write the pending group (caller holds group.lock); on a tracking conflict (part of it
        applied already, by a runner that replaced this one), event by event, skipping those."""
        if group.closed:
            group.pending.clear()
            return
        batch = list(group.pending)
        try:
            # tracking first, as apply() does: a rebuild's swap holds the tracking table and then
            # drops the live tables; rows first would deadlock with it
            self.apply_batch(batch, tracking_first=True)
        except IntegrityError:
            for writes, position in batch:
                self.apply(writes, Tracking(APP, position))
        group.pending.clear()

    def apply(self, writes: Sequence[Write], tracking: Tracking) -> None:
        """One event: tracking first (refused if not advancing), then its rows, one transaction."""
        try:
            self._apply(writes, tracking)
        except IntegrityError:
            log.debug("projection.skip_applied", projection=self.projection.name, position=tracking.notification_id)
        except (DataError, PgDataError) as error:
            # PostgreSQL's text and jsonb cannot hold NUL. The API refuses control characters, but
            # an event stored before it did must not stop this read model for good: its NULs are
            # written as U+FFFD (the event itself is unchanged). Any other data error is raised.
            log.warning("projection.nul_replaced", projection=self.projection.name,
                        position=tracking.notification_id, error=repr(error)[:200])
            self._apply(_without_nul_writes(writes), tracking)

    def _apply(self, writes: Sequence[Write], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute("SET LOCAL synchronous_commit = off")
            self._use_schema(curs)
            self._insert_tracking(curs, tracking)
            for write in writes:
                curs.execute(write.sql, write.params)

    def apply_batch(self, batch: Sequence[tuple[Sequence[Write], int]], curs: Any | None = None,
                    tracking_first: bool = False) -> None:
        """Many events in one transaction (rebuild): rows in order, then the last position.
        A NUL in an old event is handled as in apply()."""
        if not batch:
            return
        if curs is not None:  # inside the caller's transaction: a savepoint to retry in
            try:
                with curs.connection.transaction():
                    return self._write_batch(curs, batch, tracking_first=tracking_first)
            except (DataError, PgDataError):
                return self._write_batch(curs, _without_nul_batch(batch), tracking_first=tracking_first)
        try:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute("SET LOCAL synchronous_commit = off")
                self._write_batch(curs, batch, tracking_first=tracking_first)
        except (DataError, PgDataError):
            with self.datastore.transaction(commit=True) as curs:
                curs.execute("SET LOCAL synchronous_commit = off")
                self._write_batch(curs, _without_nul_batch(batch), tracking_first=tracking_first)

    def _write_batch(self, curs: Any, batch: Sequence[tuple[Sequence[Write], int]], position: int | None = None,
                     tracking_first: bool = False) -> None:
        """Writes in log order (pipelined), then the append-only ones grouped per statement; the
        batch's last position is tracked after them, or before them with tracking_first."""
        self._use_schema(curs)
        if tracking_first:
            self._insert_tracking(curs, Tracking(APP, position or batch[-1][1]))
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
        if not tracking_first:
            self._insert_tracking(curs, Tracking(APP, position or batch[-1][1]))

    def advance(self, position: int, curs: Any | None = None) -> None:
        """Track a position with no rows to write (the log's head, past events this view ignores)."""
        if curs is not None:
            return self._insert_tracking(curs, Tracking(APP, position))
        self.insert_tracking(Tracking(APP, position))

    def position(self) -> int:
        return self.max_tracking_id(APP) or 0


def without_nul(value: Any) -> Any:
    """The value with every NUL character in its strings (nested in dicts, lists, Jsonb) as U+FFFD,
    also where a string already holds JSON text (the escape \\u0000). Only used on a retry."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").replace("\\u0000", "\\ufffd")
    if isinstance(value, Mapping):
        return {key: without_nul(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_nul(item) for item in value)
    if isinstance(value, Jsonb):
        return Jsonb(without_nul(value.obj))
    return value


def _without_nul_batch(batch: Sequence[tuple[Sequence[Write], int]]) -> list[tuple[list[Write], int]]:
    return [(_without_nul_writes(writes), position) for writes, position in batch]


def _without_nul_writes(writes: Sequence[Write]) -> list[Write]:
    return [Write(w.sql, without_nul(w.params), w.append_only) for w in writes]


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
                runner.view.close_group()  # first: its flusher must not write behind the new runner
                _exit_quietly(runner)
                self[name] = replacement
                log.info("projection.resumed", projection=name, outage_s=round(time.monotonic() - down.pop(name), 1))

    def stop(self) -> None:
        self.stopping.set()
        self.watcher.join(timeout=10)
        for runner in self.values():
            runner.view.close_group()  # what it had not written yet is replayed at the next start
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
    """Stop what start_runners started (an empty dict, where nothing was started, is fine)."""
    if isinstance(runners, Runners):
        runners.stop()
