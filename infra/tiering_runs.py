"""Tiering runs: indicators set-based in PostgreSQL, grades from the pure domain function,
TierAssigned appended in large batches only where the tier changes (or there was none).

The run does not load a Customer aggregate per customer: it reads each customer's version and
computed tier from the read model (after waiting until that has caught up with the log) and
appends `Customer.TierAssigned` at the next version with COPY, COPY_BATCH per transaction under
the recorder's own lock. The store refuses an event whose version is taken, so a customer changed
concurrently makes its batch fail; that batch is then redone in bounded recorder calls and, where
one fails again, one customer at a time through the aggregate (load, assign_tier, save), which
skips nobody and overwrites nothing.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from json.encoder import encode_basestring as _json_str  # what json writes for a str (ensure_ascii off)
from operator import itemgetter
from typing import Any, Callable, Iterable, Sequence, overload

import structlog
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg.types.json import Jsonb

from crm.aggregates.customer import Customer
from crm.aggregates.tiering import INDICATORS, NO_ORDERS_REASON, TieringPolicy, grade_columns
from crm.infra.event_store import CrmEventStore, copy_events, safe_calls
from crm.infra.gc_pause import cycle_collector_paused
from crm.infra.read_store import PgReadStore

log = structlog.get_logger(__name__)
COPY_BATCH = 20_000  # TierAssigned per COPY transaction: the events table stays locked for it (~0.3 s)
ACTOR = "tiering-run"
RUNS_SCHEMA = """CREATE TABLE IF NOT EXISTS crm_tiering_runs (
    id uuid PRIMARY KEY, status text NOT NULL, as_of timestamptz NOT NULL, policy_version integer NOT NULL,
    requested_by text NOT NULL, started_at timestamptz NOT NULL, finished_at timestamptz,
    evaluated integer NOT NULL DEFAULT 0, changed integer NOT NULL DEFAULT 0, progress numeric NOT NULL DEFAULT 0,
    transitions jsonb NOT NULL DEFAULT '{}', error text);
CREATE UNIQUE INDEX IF NOT EXISTS crm_tiering_runs_one_at_a_time ON crm_tiering_runs ((true)) WHERE status = 'running'"""

INDICATORS_SQL = """WITH lines AS (
    SELECT customer_id, sum(revenue) AS revenue, sum(revenue - cost) AS profit FROM read_sales.order_lines
    WHERE NOT cancelled AND placed_at >= %(start)s AND placed_at < %(end)s
      AND customer_id >= %(low)s AND (customer_id < %(high)s OR %(high)s::uuid IS NULL) GROUP BY customer_id),
invoices AS (
    SELECT o.customer_id, o.invoice_amount AS amount,
           coalesce(sum(p.amount * extract(epoch FROM p.received_at - o.invoiced_at) / 86400), 0)
           + (o.invoice_amount - coalesce(sum(p.amount), 0)) * extract(epoch FROM %(end)s - o.invoiced_at) / 86400
             AS weighted_days
    FROM read_sales.orders o LEFT JOIN read_sales.payments p ON p.order_id = o.id AND p.received_at < %(end)s
    WHERE o.status <> 'cancelled' AND o.placed_at >= %(start)s AND o.placed_at < %(end)s AND o.invoiced_at < %(end)s
      AND o.customer_id >= %(low)s AND (o.customer_id < %(high)s OR %(high)s::uuid IS NULL)
    GROUP BY o.id, o.customer_id, o.invoice_amount, o.invoiced_at),
collection AS (SELECT customer_id, sum(weighted_days) / nullif(sum(amount), 0) AS days FROM invoices
               GROUP BY customer_id)
SELECT c.id, c.version, c.tier, l.revenue, CASE WHEN l.revenue > 0 THEN l.profit / l.revenue END AS margin,
       collection.days::float8
FROM read_customers.customers c LEFT JOIN lines l ON l.customer_id = c.id
LEFT JOIN collection ON collection.customer_id = c.id
WHERE c.active AND c.id >= %(low)s AND (c.id < %(high)s OR %(high)s::uuid IS NULL)
ORDER BY c.id"""
# The customers of [low, high) in id order: the query runs as PARTS such ranges side by side,
# one per connection, as PostgreSQL gives one query one core (a million customers: ~15 s alone).
PARTS = 2


class RunInProgressError(Exception):
    """Another tiering run is still running."""


@dataclass(slots=True)
class Outcome:
    """One customer's new tier and the reasons for it."""

    customer_id: uuid.UUID
    version: int
    previous: str | None
    tier: str
    score: Decimal | None
    indicators: dict[str, Any]
    reason: str
    # The indicators again, flat as (raw, percentile) per INDICATORS name, for the bulk encoding
    # (a run's own outcomes have them; anyone else's go through the JSON encoder).
    ranked: tuple[Any, ...] | None = None


@dataclass
class RunReport:
    run_id: uuid.UUID
    evaluated: int = 0
    changed: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def outcomes(pool: Any, policy: TieringPolicy, as_of: datetime) -> tuple[int, Changes]:
    """(customers evaluated, the customers whose tier changes or who have none yet).

    Columns, not an object per customer: a run grades a million customers, and every
    microsecond per customer is a second of the run. The outcomes themselves are made batch by
    batch as they are appended (`Changes`), while the previous batch is being written."""
    rows = _indicators(pool, as_of - timedelta(days=policy.window_days), as_of)
    with cycle_collector_paused():
        return _changes(rows, policy)


def _changes(rows: list[tuple], policy: TieringPolicy) -> tuple[int, Changes]:
    if not rows:
        return 0, Changes([], lambda n, k: None)  # type: ignore[arg-type, return-value]
    ids, versions, tiers, revenues, margins, days = zip(*rows)
    with_orders = [n for n, revenue in enumerate(revenues) if revenue is not None]
    graded = grade_columns([revenues[n] for n in with_orders], [days[n] for n in with_orders],
                           [margins[n] for n in with_orders], policy)
    graded_as = [-1] * len(rows)  # customer position -> position among the graded
    for k, n in enumerate(with_orders):
        graded_as[n] = k
    new_tiers = graded.tiers
    changed = [(n, k) for n, k in enumerate(graded_as) if (new_tiers[k] if k >= 0 else "D") != tiers[n]]
    pv, pd, pm = (graded.percentiles[name] for name in INDICATORS)
    volume, days_name, margin = INDICATORS

    def outcome(n: int, k: int) -> Outcome:
        if k < 0:
            return Outcome(ids[n], versions[n], tiers[n], "D", None, {}, NO_ORDERS_REASON)
        ranked = (str(revenues[n]), pv[k], days[n], pd[k], None if margins[n] is None else str(margins[n]), pm[k])
        indicators = {volume: {"raw": ranked[0], "percentile": ranked[1]},
                      days_name: {"raw": ranked[2], "percentile": ranked[3]},
                      margin: {"raw": ranked[4], "percentile": ranked[5]}}
        return Outcome(ids[n], versions[n], tiers[n], new_tiers[k], Decimal(str(graded.scores[k])), indicators,
                       "weighted score", ranked)

    changes = Changes(changed, outcome)
    for n, k in changed:
        changes.count(tiers[n], new_tiers[k] if k >= 0 else "D")
    return len(rows), changes


class Changes(Sequence[Outcome]):
    """A run's outcomes, each made when it is read: (customer, graded) positions and the function
    that makes an Outcome of them; and the count of each transition."""

    def __init__(self, positions: list[tuple[int, int]], make: Callable[[int, int], Outcome]) -> None:
        self._positions, self._make = positions, make
        self.transitions: dict[str, int] = {}

    def count(self, previous: str | None, tier: str) -> None:
        key = f"{previous or 'unrated'}->{tier}"
        self.transitions[key] = self.transitions.get(key, 0) + 1

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, index: int) -> Outcome: ...

    @overload
    def __getitem__(self, index: slice) -> list[Outcome]: ...

    def __getitem__(self, index: int | slice) -> Outcome | list[Outcome]:
        if isinstance(index, slice):
            return [self._make(n, k) for n, k in self._positions[index]]
        return self._make(*self._positions[index])


def _indicators(pool: Any, start: datetime, end: datetime, parts: int = PARTS) -> list[tuple]:
    """INDICATORS_SQL's rows for every active customer, the id space cut into `parts` ranges
    that run side by side."""
    cuts = [uuid.UUID(int=(n << 128) // parts) for n in range(parts)] + [None]
    ranges = [{"start": start, "end": end, "low": low, "high": high} for low, high in zip(cuts, cuts[1:])]
    with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="tiering-indicators") as workers:
        return [row for rows in workers.map(lambda params: _fetch(pool, INDICATORS_SQL, params), ranges)
                for row in rows]


def _fetch(pool: Any, query: str, params: dict[str, Any]) -> list[tuple]:
    """Every row at once: a server-side cursor took ~5 s longer for a million customers (its
    fast-start plan, and PostgreSQL idle while each batch converts), and grading needs them all."""
    with pool.connection() as conn, conn.transaction():
        # The indicator aggregates hash a million customers: with the default 4 MB they spill to
        # disk (22.5 s for 1M customers here; 14.4 s with this, one EXPLAIN ANALYZE run each).
        conn.execute("SET LOCAL work_mem = '256MB'")
        cursor = conn.execute(query, params)
        with cycle_collector_paused():  # a million rows' objects
            return cursor.fetchall()


def append_tiers(store: CrmEventStore, changes: Sequence[Outcome], *, policy_version: int, run_id: uuid.UUID,
                 as_of: datetime, on_batch: Callable[[int], None] = lambda n: None,
                 batch_size: int = COPY_BATCH) -> int:
    """Append TierAssigned for every change, batch_size per transaction with COPY (under the
    recorder's own lock, crm.infra.event_store.copy_events). A batch that meets a concurrent
    change is redone in bounded recorder calls, and a call that fails again customer by customer
    through the aggregate. Returns how many were appended.

    One thread writes while this one encodes the next batch: PostgreSQL stores a batch on the
    other core meanwhile (a million customers: ~10 s less than one after the other)."""
    now = datetime.now(timezone.utc)

    def write(batch: list[Outcome], stored: list[StoredRow]) -> int:
        try:
            copy_events(store, stored)
            appended = len(batch)
        except IntegrityError:  # some customer changed since the read model saw it
            appended = _append_in_calls(store, [(o, StoredEvent(*row)) for o, row in zip(batch, stored)],
                                        policy_version, run_id, as_of)
        on_batch(len(batch))
        return appended

    writing: deque[Future[int]] = deque()
    appended = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiering-writer") as writer:
        try:
            for start in range(0, len(changes), batch_size):
                batch = changes[start:start + batch_size]
                stored = _stored_events(store, batch, policy_version, run_id, as_of, now)
                while len(writing) > 1:  # at most one batch waits while one is written
                    appended += writing.popleft().result()
                writing.append(writer.submit(write, batch, stored))
            while writing:
                appended += writing.popleft().result()
        finally:
            for pending in writing:  # after a failure: write nothing more
                pending.cancel()
    return appended


def _append_in_calls(store: CrmEventStore, pairs: list[tuple[Outcome, Any]], policy_version: int,
                     run_id: uuid.UUID, as_of: datetime) -> int:
    appended = 0
    for call in safe_calls(pairs):
        try:
            store.recorder.insert_events([event for _, event in call])
            appended += len(call)
        except IntegrityError:  # changed since the read model saw it: one by one, via the aggregate
            appended += sum(_assign_one(store, o, policy_version, run_id, as_of) for o, _ in call)
    return appended


StoredRow = tuple[uuid.UUID, int, str, bytes]  # a StoredEvent's fields, without an object per event


def _stored_events(store: CrmEventStore, batch: list[Outcome], policy_version: int, run_id: uuid.UUID,
                   as_of: datetime, now: datetime) -> list[StoredRow]:
    """The batch's TierAssigned events exactly as the library's mapper stores them, without building
    and transcoding an event object for each (that took ~30 s of a million-customer run).

    The mapper's own JSON encoder writes one event with a placeholder for each value that varies
    (`_Template`); each event then only fills in its values. For the first event of every shape
    in the batch (with or without a score, a previous tier, ranked indicators) the bytes are
    compared with the mapper's; if they differ in any way (a new field, a class_version, a cipher
    or compressor), the whole batch goes through the mapper instead."""
    mapper = store.mapper
    first = _event(batch[0], policy_version, run_id, as_of, now)
    reference = _row(mapper.to_stored_event(first))  # the mapper's bytes for the batch's first event
    topic = reference[2]
    encoder = mapper.transcoder.encoder  # type: ignore[attr-defined]
    fixed = {"timestamp": encoder.default(now), "policy_version": policy_version, "run_id": str(run_id),
             "occurred_at": encoder.default(as_of), "actor": ACTOR}
    order = [name for name in vars(first) if name not in ("originator_id", "originator_version")]
    template = _Template.build(encoder, order, fixed)
    if template is not None:
        stored = [(o.customer_id, o.version + 1, topic, template.state(o)) for o in batch]
        checked: set[tuple[bool, bool, bool]] = set()
        for o, row in zip(batch, stored):
            shape = (o.score is None, o.previous is None, o.ranked is None)
            if shape not in checked:
                checked.add(shape)
                mapped = reference if o is batch[0] else _row(
                    mapper.to_stored_event(_event(o, policy_version, run_id, as_of, now)))
                if mapped != row:
                    break
        else:
            return stored
    log.warning("tiering.fast_encoding_off", reason="differs from the mapper's bytes")
    return [_row(mapper.to_stored_event(_event(o, policy_version, run_id, as_of, now))) for o in batch]


def _row(event: StoredEvent) -> StoredRow:
    return (event.originator_id, event.originator_version, event.topic, event.state)  # type: ignore[return-value]


class _Template:
    """A TierAssigned state as the mapper's JSON encoder writes it, with a slot per varying value.

    Two shapes: an outcome with its `ranked` indicators fills one template with every leaf value
    (score, raw values, percentiles); any other outcome has its score and indicators written by
    the encoder itself."""

    SLOTS = ("tier", "previous_tier", "score", "indicators", "reason")

    def __init__(self, encoder: Any, state: tuple[str, Callable[[tuple], tuple]],
                 ranked: tuple[str, Callable[[tuple], tuple]] | None, score: tuple[str, str] | None) -> None:
        self.encoder, self._state, self._ranked, self._score = encoder, state, ranked, score
        self._floats: dict[float, str] = {}  # float -> its JSON text: ranks repeat wherever values tie

    @classmethod
    def build(cls, encoder: Any, order: list[str], fixed: dict[str, Any]) -> _Template | None:
        values = {**fixed, **{name: f"@@{slot}@@" for slot, name in enumerate(cls.SLOTS)}}
        if set(order) != set(values):
            return None  # the event has a field this encoding does not know, or lost one
        state = _with_slots(encoder.encode({name: values[name] for name in order}), range(len(cls.SLOTS)))
        probe = encoder.encode(encoder.default(Decimal("12.5")))  # a Decimal score: its text within this
        score = tuple(probe.split('"12.5"')) if probe.count('"12.5"') == 1 else None
        leaves = {name: {"raw": f"@@{5 + 2 * n}@@", "percentile": f"@@{6 + 2 * n}@@"}
                  for n, name in enumerate(INDICATORS)}  # (raw, percentile) per indicator, in place
        values["indicators"] = leaves
        ranked = _with_slots(encoder.encode({name: values[name] for name in order}),
                             [0, 1, 2, 4, *range(5, 5 + 2 * len(INDICATORS))])
        if state is None:
            return None
        return cls(encoder, state, ranked if score else None, score)  # type: ignore[arg-type]

    def state(self, o: Outcome) -> bytes:
        previous = "null" if o.previous is None else _json_str(o.previous)
        if o.ranked is not None and o.score is not None and self._ranked is not None:
            template, pick = self._ranked
            floats = self._floats
            volume, volume_rank, days, days_rank, margin, margin_rank = o.ranked
            texts = []
            for value in (volume_rank, days, days_rank, margin_rank):
                text = floats.get(value)  # type: ignore[arg-type]
                if text is None:
                    text = "null" if value is None else floats.setdefault(value, float.__repr__(value))
                texts.append(text)
            return (template % pick((
                _json_str(o.tier), previous, f'{self._score[0]}"{o.score!s}"{self._score[1]}', None,  # type: ignore[index]
                _json_str(o.reason), _json_str(volume), texts[0], texts[1], texts[2],
                "null" if margin is None else _json_str(margin), texts[3]))).encode("utf8")
        template, pick = self._state
        score = "null" if o.score is None else self.encoder.encode(self.encoder.default(o.score))
        return (template % pick((_json_str(o.tier), previous, score, self.encoder.encode(o.indicators),
                                 _json_str(o.reason)))).encode("utf8")


def _with_slots(encoded: str, slots: Iterable[int]) -> tuple[str, Callable[[tuple], tuple]] | None:
    """The encoded text as a %-format template: each "@@n@@" placeholder becomes %s; and the
    function that puts values given in slot order into the order the template wants them."""
    template, found = encoded.replace("%", "%%"), []
    for slot in slots:
        if template.count(f'"@@{slot}@@"') != 1:
            return None
        found.append((template.index(f'"@@{slot}@@"'), slot))
    for _, slot in found:
        template = template.replace(f'"@@{slot}@@"', "%s")
    return template, itemgetter(*(slot for _, slot in sorted(found)))


def _event(o: Outcome, policy_version: int, run_id: uuid.UUID, as_of: datetime, now: datetime) -> Any:
    return Customer.TierAssigned(  # type: ignore[call-arg]
        originator_id=o.customer_id, originator_version=o.version + 1, timestamp=now, tier=o.tier,
        previous_tier=o.previous, score=o.score, indicators=o.indicators, policy_version=policy_version,
        reason=o.reason, run_id=str(run_id), occurred_at=as_of, actor=ACTOR)


def _assign_one(store: CrmEventStore, o: Outcome, policy_version: int, run_id: uuid.UUID, as_of: datetime) -> int:
    customer = store.customers.get(o.customer_id)
    if customer.tier == o.tier or not customer.active:
        return 0  # someone else's change made this one unnecessary
    customer.assign_tier(tier=o.tier, score=o.score, indicators=o.indicators, policy_version=policy_version,
                         reason=o.reason, run_id=str(run_id), occurred_at=as_of, actor=ACTOR)
    store.save(customer)
    return 1


class RunStore:
    """The runs table: status, progress and summary of every run; one running at a time."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        with pool.connection() as conn:
            conn.execute(RUNS_SCHEMA)

    def begin(self, as_of: datetime, policy_version: int, actor: str) -> uuid.UUID:
        run_id = uuid.uuid4()
        with self.pool.connection() as conn:
            self._fail_abandoned(conn)
            try:
                conn.execute("""INSERT INTO crm_tiering_runs (id, status, as_of, policy_version, requested_by, started_at)
                    VALUES (%s, 'running', %s, %s, %s, now())""", (run_id, as_of, policy_version, actor))
            except Exception as error:
                if "crm_tiering_runs_one_at_a_time" in str(error):
                    raise RunInProgressError("a tiering run is already running") from error
                raise
        return run_id

    def _fail_abandoned(self, conn: Any) -> None:
        """A run whose process died holds no advisory lock any more: mark it failed."""
        for (run_id,) in conn.execute("SELECT id FROM crm_tiering_runs WHERE status = 'running'").fetchall():
            if conn.execute("SELECT pg_try_advisory_lock(hashtext(%s::text))", (str(run_id),)).fetchone()[0]:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s::text))", (str(run_id),))
                conn.execute("UPDATE crm_tiering_runs SET status = 'failed', error = 'abandoned: its process stopped', "
                             "finished_at = now() WHERE id = %s", (run_id,))

    def update(self, run_id: uuid.UUID, **columns: Any) -> None:
        sets = ", ".join(f"{name} = %({name})s" for name in columns)  # names are ours, never input
        values = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in columns.items()}
        with self.pool.connection() as conn:
            conn.execute(f"UPDATE crm_tiering_runs SET {sets} WHERE id = %(id)s", {**values, "id": run_id})

    def get(self, run_id: uuid.UUID) -> dict[str, Any] | None:
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute("SELECT * FROM crm_tiering_runs WHERE id = %s", (run_id,)).fetchone()


def execute(store: CrmEventStore, pool: Any, reads: PgReadStore, runs: RunStore, run_id: uuid.UUID,
            policy: TieringPolicy, as_of: datetime, progress: Callable[[int, int], None] = lambda d, t: None) -> RunReport:
    """Run to the end, recording progress; holds an advisory lock that marks the run alive."""
    started = time.perf_counter()
    with pool.connection() as lock:
        lock.execute("SELECT pg_advisory_lock(hashtext(%s::text))", (str(run_id),))
        try:
            if not reads.wait_for(store.position(), timeout=120):
                raise RuntimeError("the read models did not catch up with the event log")
            evaluated, changes = outcomes(pool, policy, as_of)
            transitions = changes.transitions
            done = [0]

            def on_batch(n: int) -> None:
                done[0] += n
                progress(done[0], len(changes))
                runs.update(run_id, progress=round(done[0] / max(len(changes), 1), 4))

            with cycle_collector_paused():
                changed = append_tiers(store, changes, policy_version=policy.version, run_id=run_id, as_of=as_of,
                                       on_batch=on_batch)
            report = RunReport(run_id, evaluated, changed, transitions, time.perf_counter() - started)
            runs.update(run_id, status="succeeded", evaluated=evaluated, changed=changed, progress=1,
                        transitions=transitions, finished_at=datetime.now(timezone.utc))
            log.info("tiering.run.done", run_id=str(run_id), evaluated=evaluated, changed=changed,
                     seconds=round(report.seconds, 2))
            return report
        except Exception as error:
            runs.update(run_id, status="failed", error=str(error)[:500], finished_at=datetime.now(timezone.utc))
            log.exception("tiering.run.failed", run_id=str(run_id))
            raise
        finally:
            lock.execute("SELECT pg_advisory_unlock(hashtext(%s::text))", (str(run_id),))
