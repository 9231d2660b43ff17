"""Stored events as CloudEvents 1.0 (structured JSON), the envelope downstream services rely on."""

from __future__ import annotations

import functools
import json
import re
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


# The stored JSON, as the library writes it: the envelope first, then the event's fields with
# occurred_at and actor last; ids, decimals and times as {"_type_": ..., "_data_": ...} values.
_TYPED = re.compile(rb'\{"_type_":"(uuid_hex|decimal_str|datetime_iso|date_iso)","_data_":"([^"\\]*)"\}')
_HEAD = re.compile(rb'\{"timestamp":"([^"\\]*)",(?:"originator_topic":"[^"\\]*",)?')
_TAIL = re.compile(rb',"occurred_at":"([^"\\]*)","actor":"(?:[^"\\]|\\.)*"\}\Z')
_CLASS_VERSION_MARK, _PERSONAL_MARK = b'"class_version"', b'"%s":' % PERSONAL_FIELD.encode()


def unwrap(state: bytes) -> bytes:
    """The store's typed values as plain JSON strings (ids in their 8-4-4-4-12 form)."""
    parts = _TYPED.split(state)
    if len(parts) == 1:
        return state
    out = [parts[0]]
    for i in range(1, len(parts), 3):
        kind, data = parts[i], parts[i + 1]
        if kind == b"uuid_hex":
            data = b"%s-%s-%s-%s-%s" % (data[:8], data[8:12], data[12:16], data[16:20], data[20:])
        out += (b'"', data, b'"', parts[i + 2])
    return b"".join(out)


def cut(state: bytes, class_version: int) -> tuple[bytes, bytes, bytes] | None:
    """(recorded_at, occurred_at, data as a JSON object) cut from the stored JSON without decoding it;
    None when only the library's mapper can read the event: written by an older version of its
    class (it needs upcasting), holding sealed personal data, or of a shape not expected here."""
    if class_version != 1 or _CLASS_VERSION_MARK in state or _PERSONAL_MARK in state:
        return None
    plain = unwrap(state)
    head = _HEAD.match(plain)
    tail = _TAIL.match(plain, max(plain.rfind(b',"occurred_at":"'), 0))
    if head is None or tail is None:
        return None
    return head[1], tail[1], b"{" + plain[head.end():]


def to_cloudevent(notification: Notification, upcast: Callable[[Notification], dict[str, Any]],
                  opened: Callable[[Notification], tuple[bytes, bytes] | None] = lambda n: None
                  ) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """(topic, key, value, headers) of one event; `id` is `<aggregate id>:<version>`, the dedupe key.

    The stored JSON is used as it is (cut, not decoded), unless it was written by an older version
    of the event class: then `upcast` (the library's mapper, which runs the class's upcasters and
    opens the seal) supplies it. Sealed personal data is opened by `opened` (the mapper's
    `opened_json`) and its fields spliced in last, where the decoded event has them; where it
    cannot (another shape), `upcast` supplies the event."""
    kafka_topic, ce_type, schema = event_type(notification.topic)
    state, personal, class_version = notification.state, None, _class_version(notification.topic)
    if class_version == 1 and _PERSONAL_MARK in state and (found := opened(notification)) is not None:
        state, personal = found
    pieces = cut(state, class_version)
    if pieces is not None and personal is not None:
        fields = unwrap(personal)
        pieces = pieces if fields == b"{}" else (pieces[0], pieces[1], pieces[2][:-1] + b"," + fields[1:])
    if pieces is not None:
        return _spliced(kafka_topic, ce_type, schema, notification, *pieces)
    return decoded_cloudevent(notification, upcast)


def decoded_cloudevent(notification: Notification, upcast: Callable[[Notification], dict[str, Any]]
                       ) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """The general path of to_cloudevent: the stored JSON decoded (and upcast when it must be)."""
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


@functools.lru_cache(maxsize=None)
def _class_version(topic: str) -> int:
    return getattr(resolve_topic(topic), "class_version", 1)


def _spliced(kafka_topic: str, ce_type: str, schema: str, notification: Notification, recorded_at: bytes,
             occurred_at: bytes, data: bytes) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """The same envelope as the decoding path, assembled from the cut pieces."""
    subject = str(notification.originator_id).encode()
    version = b"%d" % notification.originator_version
    event_id, position, type_ = b"%s:%s" % (subject, version), b"%d" % notification.id, ce_type.encode()
    value = (b'{"specversion":"1.0","id":"%s","source":"crm","type":"%s","subject":"%s","time":"%s",'
             b'"datacontenttype":"application/json","dataschema":"%s","position":%s,"aggregateversion":%s,'
             b'"recordedat":"%s","data":%s}' % (event_id, type_, subject, occurred_at,
                                                (SCHEMA_BASE + schema).encode(), position, version, recorded_at, data))
    headers = [_SPECVERSION_HEADER, ("ce_id", event_id), _SOURCE_HEADER, ("ce_type", type_),
               ("ce_subject", subject), ("ce_time", occurred_at), ("ce_position", position),
               ("ce_aggregateversion", version), _CONTENT_TYPE_HEADER]
    return kafka_topic, subject, value, headers


# The headers every message carries unchanged (shared, not rebuilt per event).
_SPECVERSION_HEADER, _SOURCE_HEADER = ("ce_specversion", b"1.0"), ("ce_source", b"crm")
_CONTENT_TYPE_HEADER = ("content-type", b"application/cloudevents+json; charset=utf-8")
