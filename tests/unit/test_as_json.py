"""as_json (orjson) writes the same JSON values as the json.dumps it replaced."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID

from hypothesis import given, strategies as st

from crm.projections.base import _plain, as_json

zones = st.sampled_from([timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30)), None])
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(),
    st.decimals(allow_nan=False, allow_infinity=False), st.uuids(), st.dates(),
    st.builds(lambda d, tz: d.replace(tzinfo=tz), st.datetimes(), zones))
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(), inner, max_size=4), st.dictionaries(st.integers(), inner, max_size=4)), max_leaves=20)


def stdlib(value: object) -> str:
    return json.dumps(value, default=_plain, sort_keys=True)


def canonical(text: str) -> str:
    """The JSON value, written one way: true stays apart from 1, and 1 from 1.0."""
    return json.dumps(json.loads(text), sort_keys=True)


@given(values)
def test_the_same_json_value_as_json_dumps(value: object) -> None:
    assert canonical(as_json(value)) == canonical(stdlib(value))


def test_event_data_types_are_written_as_before() -> None:
    moment = datetime(2026, 12, 2, 1, 54, 8, 688349, tzinfo=timezone.utc)
    value = {"at": moment, "on": date(2026, 12, 2), "id": UUID(int=7), "amount": Decimal("12.50"),
             "z": [1, "x", None, True, 1.5]}
    assert json.loads(as_json(value)) == json.loads(stdlib(value)) == {
        "at": "2026-12-02T01:54:08.688349+00:00", "on": "2026-12-02", "id": "00000000-0000-0000-0000-000000000007",
        "amount": "12.50", "z": [1, "x", None, True, 1.5]}
    assert list(json.loads(as_json({"b": 1, "a": 2}))) == ["a", "b"]  # keys sorted, as before


def test_orjson_writes_the_usual_values() -> None:
    # compact separators: orjson wrote this, not the json.dumps fallback (which puts spaces)
    assert as_json({"b": [1, 2], "a": {"at": date(2026, 12, 2)}}) == '{"a":{"at":"2026-12-02"},"b":[1,2]}'


def test_what_orjson_refuses_is_written_by_json_dumps_exactly() -> None:
    for value in ({"z": 2**70, "a": UUID(int=1), "m": Decimal("1.5")}, {3: "three", 1: "one"}):
        assert as_json(value) == stdlib(value)
    assert as_json({3: "three", 1: "one"}) == '{"1": "one", "3": "three"}'


def test_a_float_that_is_not_finite_becomes_null() -> None:
    # json.dumps wrote NaN, which jsonb refuses; the domain keeps such floats out of events
    assert json.loads(as_json({"x": math.nan, "y": math.inf})) == {"x": None, "y": None}
