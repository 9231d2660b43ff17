"""What every read-model projection shares: writes as data, applied with the tracking position."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar, Mapping, Protocol, Sequence
from uuid import UUID

import orjson
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic


@dataclass(frozen=True)
class Write:
    """One SQL statement against the projection's own tables (unqualified names).

    `append_only`: an insert that no later write reads or changes (a timeline step, a history
    row), so a batch may send all of them together at its end.
    """

    sql: str
    params: Mapping[str, Any]
    append_only: bool = False


class ReadModelView(Protocol):
    """The materialised view a projection writes to (implemented in crm.infra.read_models)."""

    def apply(self, writes: Sequence[Write], tracking: Tracking) -> None: ...

    def defer(self, writes: Sequence[Write], tracking: Tracking) -> None: ...


_ORJSON = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | \
    orjson.OPT_PASSTHROUGH_SUBCLASS


def as_json(value: Any) -> str:
    """Event data as JSON for jsonb columns (Decimal as string, dates ISO, ids as text).

    orjson writes it (3-4 µs for a complaint step's details against 12-17 µs with `json.dumps`:
    `python -m bench.rebuild`; it was an eighth of a complaints rebuild's cProfile); dates and the
    other types it would write its own way are handed to `_plain`, as `json.dumps` did. What orjson refuses (an integer beyond 64 bits,
    a key that is not a string, a subclass of str, int, dict or list) is written by `json.dumps` as
    before. jsonb keeps the value, not the text: the spacing differs, the stored values do not
    (tests/unit/test_as_json.py). Two differences, for values no event carries: a float that is
    not finite becomes null, where `json.dumps` wrote NaN, which jsonb refuses (the domain lets
    only finite floats into events); and a plain Enum is written as its value, where `json.dumps`
    raised TypeError."""
    try:
        return orjson.dumps(value, default=_plain, option=_ORJSON).decode()
    except TypeError:  # orjson's JSONEncodeError is one
        return json.dumps(value, default=_plain, sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(type(value))


class ReadModelProjection(Projection[Any]):
    """A projection is a function of (view, event): it turns each event into writes.

    Events it does not handle produce no writes, but their position is still tracked,
    so `X-Min-Position` and /health can compare every projection with the log's head.
    """

    schema: ClassVar[str]                 # the PostgreSQL schema that holds its tables
    tables: ClassVar[dict[str, str]]      # table name -> CREATE TABLE body (columns, keys)
    indexes: ClassVar[tuple[str, ...]] = ()

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.defer(self.writes(domain_event), tracking)  # written in groups, see the view

    def writes(self, domain_event: Any) -> list[Write]:
        """`writes_for`, dispatched through a per-class table: on Python 3.11 every access to a
        singledispatchmethod builds and wraps a new function (update_wrapper), which cost a rebuild
        more than decoding the event did."""
        return type(self)._handler(type(domain_event))(self, domain_event)

    @classmethod
    @functools.cache
    def _handler(cls, event_class: type) -> Any:
        return cls.__dict__["writes_for"].dispatcher.dispatch(event_class)

    def writes_for(self, domain_event: Any) -> list[Write]:
        """Each projection dispatches on the event's type with its own singledispatchmethod."""
        raise NotImplementedError

    @classmethod
    @functools.cache
    def handled_topics(cls) -> tuple[str, ...]:
        """The topics of every event class this projection writes for (and their subclasses)."""
        registered = [c for c in cls.__dict__["writes_for"].dispatcher.registry if c is not object]
        found: set[type] = set()
        while registered:
            event_class = registered.pop()
            if event_class not in found:
                found.add(event_class)
                registered.extend(event_class.__subclasses__())
        # An event class declared explicitly (to give it a class_version) has a same-named subclass
        # made by the @event decorator; that subclass is the one stored, so only it has a topic.
        shadowed = {c for c in found if any(s.__qualname__ == c.__qualname__ for s in c.__subclasses__())}
        return tuple(sorted(get_topic(c) for c in found - shadowed))
