"""as_json (orjson) writes the same JSON values as the json.dumps it replaced."""

from __future__ import annotations

import json
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


@given(values)
def test_the_same_json_value_as_json_dumps(value: object) -> None:
    assert json.loads(as_json(value)) == json.loads(stdlib(value))


def test_event_data_types_are_written_as_before() -> None:
    moment = datetime(2026, 12, 2, 1, 54, 8, 688349, tzinfo=timezone.utc)
    value = {"at": moment, "on": date(2026, 12, 2), "id": UUID(int=7), "amount": Decimal("12.50"), 3: "three",
             "z": [1, "x", None]}
    assert json.loads(as_json(value)) == {"at": "2026-12-02T01:54:08.688349+00:00", "on": "2026-12-02",
                                          "id": "00000000-0000-0000-0000-000000000007", "amount": "12.50",
                                          "3": "three", "z": [1, "x", None]}
    assert list(json.loads(as_json({"b": 1, "a": 2}))) == ["a", "b"]  # keys sorted, as before


def test_what_orjson_refuses_is_written_by_json_dumps() -> None:
    assert as_json({"n": 2**70}) == stdlib({"n": 2**70}) == '{"n": 1180591620717411303424}'
