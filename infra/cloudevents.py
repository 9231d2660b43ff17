"""Stored events as CloudEvents 1.0 (structured JSON), the envelope downstream services rely on."""

from __future__ import annotations

import functools
import json
from typing import Any, Callable
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.utils import resolve_topic

ENVELOPE_FIELDS = {"originator_id", "originator_version", "timestamp", "originator_topic"}
SCHEMA_BASE = "urn:crm:schema:"
PERSONAL_FIELD = "_personal"  # where crm.infra.personal_data keeps an event's sealed personal data


def _plain(d: dict[str, Any]) -> Any:
    """Undo the event store's typed JSON: ids, decimals and times become plain JSON strings."""
    if len(d) == 2 and "_type_" in d and "_data_" in d:
        kind, data = d["_type_"], d["_data_"]
        return str(UUID(data)) if kind == "uuid_hex" else data
    return d


_decode = json.JSONDecoder(object_hook=_plain).decode


@functools.lru_cache(maxsize=None)
def event_type(topic: str) -> tuple[str, str, str]:
    """(Kafka topic, CloudEvents type, schema name) of a stored event's class topic."""
    event_class = resolve_topic(topic)
    aggregate = event_class.__qualname__.split(".")[0].lower()
    name = event_class.__name__
    version = getattr(event_class, "class_version", 1)
    ce_type = f"crm.{aggregate}.{name}.v{version}"
    return f"crm.{aggregate}", ce_type, ce_type


def plain_json(value: Any) -> Any:
    """A domain object's attributes as plain JSON values (the same shapes as the fast path)."""
    def default(o: Any) -> Any:
        return o.isoformat() if hasattr(o, "isoformat") else str(o)

    return json.loads(json.dumps(value, default=default))


def to_cloudevent(notification: Notification, upcast: Callable[[Notification], dict[str, Any]]
                  ) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """(topic, key, value, headers) of one event; `id` is `<aggregate id>:<version>`, the dedupe key.

    The stored JSON is used as it is, unless it was written by an older version of the event
    class or holds sealed personal data: then `upcast` (the library's mapper, which runs the
    class's upcasters and opens the seal) supplies it."""
    kafka_topic, ce_type, schema = event_type(notification.topic)
    state = _decode(notification.state.decode("utf8"))
    if state.pop("class_version", 1) != getattr(resolve_topic(notification.topic), "class_version", 1) \
            or PERSONAL_FIELD in state:  # sealed personal data: the mapper opens it (or shows it erased)
        state = upcast(notification)
    subject = str(notification.originator_id)
    envelope = {
        "specversion": "1.0", "id": f"{subject}:{notification.originator_version}", "source": "crm",
        "type": ce_type, "subject": subject, "time": state.get("occurred_at") or state.get("timestamp"),
        "datacontenttype": "application/json", "dataschema": SCHEMA_BASE + schema,
        "position": notification.id, "aggregateversion": notification.originator_version,
        "recordedat": state.get("timestamp"),
        "data": {k: v for k, v in state.items() if k not in ENVELOPE_FIELDS},
    }
    headers = [(f"ce_{k}", str(envelope[k]).encode()) for k in
               ("specversion", "id", "source", "type", "subject", "time", "position", "aggregateversion")]
    headers.append(("content-type", b"application/cloudevents+json; charset=utf-8"))
    return kafka_topic, subject.encode(), json.dumps(envelope, separators=(",", ":")).encode(), headers
