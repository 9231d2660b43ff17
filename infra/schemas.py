"""JSON Schemas of every event's `data`, generated from the event classes themselves."""

from __future__ import annotations

import json
import typing
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import WithJsonSchema, create_model

from crm.aggregates.complaint import Complaint
from crm.aggregates.customer import Customer
from crm.aggregates.order import Order
from crm.aggregates.product import Product
from crm.infra.cloudevents import ENVELOPE_FIELDS, SCHEMA_BASE

AGGREGATES = (Customer, Product, Order, Complaint)
DecimalString = Annotated[str, WithJsonSchema({"type": "string", "pattern": r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$",
                                               "description": "a decimal number as a string"})]
SKIP = ENVELOPE_FIELDS | {"originator_id_type"}


def event_classes() -> list[type]:
    """Every event class of every aggregate, e.g. Complaint.Filed."""
    found = []
    for aggregate in AGGREGATES:
        for value in vars(aggregate).values():
            if isinstance(value, type) and issubclass(value, aggregate.Event) and value is not aggregate.Event \
                    and value.__name__ not in ("Created",):
                found.append(value)
    return sorted(found, key=lambda c: c.__qualname__)


def _as_json_type(hint: Any) -> Any:
    """The type an event attribute has once published (decimals as strings)."""
    if hint is Decimal:
        return DecimalString
    args = typing.get_args(hint)
    if args:
        origin = typing.get_origin(hint)
        converted = tuple(_as_json_type(a) for a in args)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
            return typing.Union[converted]  # type: ignore[return-value]
        return origin[converted] if origin not in (dict,) else dict[converted]  # type: ignore[index]
    return hint


def schema_for(event_class: type) -> dict[str, Any]:
    from crm.infra.cloudevents import event_type

    hints = typing.get_type_hints(event_class)
    # An explicitly declared event (one with a class_version) keeps its fields on the class the
    # @event decorator subclasses; both carry the same qualified name.
    own = list(dict.fromkeys(name for c in reversed(event_class.__mro__) if c.__qualname__ == event_class.__qualname__
                             for name in vars(c).get("__annotations__", {}) if name not in SKIP))
    fields = {name: (_as_json_type(hints[name]), ...) for name in own}
    model = create_model(event_class.__qualname__.replace(".", ""), **fields)  # type: ignore[call-overload]
    schema = model.model_json_schema()
    _, ce_type, name = event_type(f"{event_class.__module__}:{event_class.__qualname__}")
    schema.update({"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_BASE + name,
                   "title": ce_type, "description": f"The data of {event_class.__qualname__} events ({ce_type}).",
                   "additionalProperties": False})
    return schema


def generate() -> dict[str, str]:
    """File name -> JSON text, for every event type."""
    out = {}
    for event_class in event_classes():
        schema = schema_for(event_class)
        out[f"{schema['title']}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = generate()
    for stale in directory.glob("crm.*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (directory / name).write_text(text)
    return sorted(files)


def stale(directory: Path) -> list[str]:
    """Names of schema files that differ from what the event classes generate now."""
    files = generate()
    present = {p.name for p in directory.glob("crm.*.json")}
    differing = [n for n, text in files.items() if not (directory / n).exists() or (directory / n).read_text() != text]
    return sorted(set(differing) | (present - set(files)))
