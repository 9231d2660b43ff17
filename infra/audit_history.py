"""A customer's history straight from the event store, and the customer as it stood at an instant.

History: the customer's own events and those of the orders and complaints that refer to it, in
global order. Which orders and complaints those are comes from the chainer's customer links (an
index lookup) plus a scan of the few events the chainer has not reached yet, so the answer is
complete whether or not the chainer is caught up.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, Iterator, Literal
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic, resolve_topic
from psycopg import sql
from psycopg_pool import ConnectionPool

from crm.aggregates.customer import Customer
from crm.infra.audit_chain import LINK_TOPICS
from crm.infra.audit_schema import CHAIN, LINKS, ensure_schema, events_table
from crm.infra.cloudevents import cut, plain_json
from crm.infra.event_store import CrmEventStore

FETCH = 2_000
REGISTERED = get_topic(Customer.Registered)
HIDDEN = {"timestamp", "originator_topic", "class_version"}  # envelope, shown as fields of their own
Basis = Literal["recorded", "occurred"]

_HISTORY = """
WITH chained AS (SELECT coalesce(max(position), 0) AS position FROM {chain}),
streams AS (
    SELECT %(customer)s::uuid AS id
    UNION SELECT aggregate_id FROM {links} WHERE customer_id = %(customer)s
    UNION SELECT e.originator_id FROM {events} e, chained
     WHERE e.notification_id > chained.position AND e.originator_version = 1 AND e.topic = ANY(%(topics)s)
       AND convert_from(e.state, 'UTF8')::jsonb -> 'customer_id' ->> '_data_' = %(hex)s)
SELECT e.notification_id, e.originator_id::text, e.originator_version, e.topic, e.state, h.hash
  FROM streams s JOIN {events} e ON e.originator_id = s.id
  LEFT JOIN {chain} h ON h.position = e.notification_id
 ORDER BY e.notification_id
"""
@functools.lru_cache(maxsize=None)
def _names(topic: str) -> tuple[bytes, bytes, int]:
    """(aggregate type, event type, class version) of an event topic."""
    event_class = resolve_topic(topic)
    return (event_class.__qualname__.split(".")[0].encode(), event_class.__name__.encode(),
            getattr(event_class, "class_version", 1))


def customer_registered(store: CrmEventStore, pool: ConnectionPool, customer_id: UUID) -> bool:
    """Whether a customer with this id was ever registered (an order's id is not a customer)."""
    query = sql.SQL("SELECT topic FROM {} WHERE originator_id = %s AND originator_version = 1").format(
        events_table(store))
    with pool.connection() as conn:
        row = conn.execute(query, (customer_id,)).fetchone()
    return row is not None and row[0] == REGISTERED


def history(store: CrmEventStore, pool: ConnectionPool, customer_id: UUID) -> Iterator[bytes]:
    """Every event of the customer and of its orders and complaints, in global order, one JSON
    object per event: position, aggregate_type, aggregate_id, version, type, occurred_at,
    recorded_at, data, hash (null until chained). Streamed from a server-side cursor."""
    ensure_schema(pool)
    query = sql.SQL(_HISTORY).format(chain=CHAIN, links=LINKS, events=events_table(store))
    params = {"customer": customer_id, "topics": list(LINK_TOPICS), "hex": customer_id.hex}
    with pool.connection() as conn, conn.cursor(name=f"audit_history_{id(conn)}", binary=True) as curs:
        conn.execute("SET LOCAL work_mem = '64MB'")  # sort a long history in memory, not on disk
        curs.itersize = FETCH
        curs.execute(query, params)
        while rows := curs.fetchmany(FETCH):
            for row in rows:
                yield _line(store, *row)


def _line(store: CrmEventStore, position: int, aggregate_id: str, version: int, topic: str, state: bytes,
          chain_hash: bytes | None) -> bytes:
    """One event as JSON, cut from the stored JSON without decoding it (the common, fast path)."""
    aggregate_type, event_type, class_version = _names(topic)
    pieces = cut(state, class_version)  # sealed personal data or an old class version: the mapper
    if pieces is None:
        stored = StoredEvent(originator_id=UUID(aggregate_id), originator_version=version, topic=topic, state=state)
        entry = _entry(store, position, stored, chain_hash)
        return json.dumps(entry, separators=(",", ":")).encode()
    recorded_at, occurred_at, data = pieces
    return (b'{"position":%d,"aggregate_type":"%s","aggregate_id":"%s","version":%d,"type":"%s",'
            b'"occurred_at":"%s","recorded_at":"%s","data":%s,"hash":%s}'
            % (position, aggregate_type, aggregate_id.encode(), version, event_type, occurred_at, recorded_at,
               data, b'"%s"' % chain_hash.hex().encode() if chain_hash else b"null"))


def _entry(store: CrmEventStore, position: int, stored: StoredEvent, chain_hash: bytes | None) -> dict[str, Any]:
    """The general path: the library's mapper decodes (and upcasts, and opens) the stored event."""
    body = plain_json(vars(store.mapper.to_domain_event(stored)))
    aggregate_type, event_type, _ = _names(stored.topic)
    return {"position": position, "aggregate_type": aggregate_type.decode(),
            "aggregate_id": str(stored.originator_id), "version": stored.originator_version,
            "type": event_type.decode(), "occurred_at": body.get("occurred_at"),
            "recorded_at": body.get("timestamp"),
            "data": {k: v for k, v in body.items() if k not in HIDDEN and not k.startswith("originator_")},
            "hash": chain_hash.hex() if chain_hash else None}


def customer_as_of(store: CrmEventStore, customer_id: UUID, as_of: datetime, basis: Basis = "recorded"
                   ) -> Customer | None:
    """The customer rebuilt from its events known at `as_of` (recorded basis: stored by then;
    occurred basis: with business time by then); None if it was not registered by then."""
    customer: Customer | None = None
    for stored in store.recorder.select_events(customer_id):
        event = store.mapper.to_domain_event(stored)
        when = event.timestamp if basis == "recorded" else getattr(event, "occurred_at", event.timestamp)
        if when > as_of:
            continue  # occurred basis: a later event may still be back-dated before as_of
        if customer is None:
            if not isinstance(event, Customer.Registered):
                return None
            customer = event.mutate(None)
        elif event.originator_version == customer.version + 1:
            event.mutate(customer)
        else:  # occurred basis skipped an event: apply this one without the library's sequence check
            event.apply(customer)
            customer.version, customer.modified_on = event.originator_version, event.timestamp
    return customer
