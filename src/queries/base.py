"""What every query shares: the read-store port, signed keyset cursors, pages, periods."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Generic, Mapping, Protocol, Sequence, TypeVar

from pydantic import BaseModel

T = TypeVar("T")
MAX_LIMIT = 500


class ReadStore(Protocol):
    """Parameterised reads of the read models (implemented in crm.infra.read_store)."""

    def all(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def one(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> dict[str, Any] | None: ...


class BadCursorError(ValueError):
    """The cursor was not issued by this system for this listing (or was altered)."""


class Page(BaseModel, Generic[T]):
    """One page of a listing; pass `next_cursor` back as `cursor` for the next one (null: no more)."""

    items: list[T]
    next_cursor: str | None


class CursorCodec:
    """Keyset cursors: the last row's sort key, signed so a client cannot forge or alter one."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def encode(self, listing: str, key: Sequence[Any]) -> str:
        payload = json.dumps([listing, [_plain(v) for v in key]], separators=(",", ":")).encode()
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")

    def decode(self, listing: str, cursor: str) -> list[Any]:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            mac, payload = raw[:16], raw[16:]
            expected = hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]
            if not hmac.compare_digest(mac, expected):
                raise BadCursorError("cursor is not valid")
            name, key = json.loads(payload)
        except (ValueError, TypeError) as error:
            raise BadCursorError("cursor is not valid") from error
        if name != listing:
            raise BadCursorError("cursor belongs to another listing")
        return key


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (date, datetime)) else value if isinstance(
        value, (int, str, float, type(None))) else str(value)


def page(rows: list[dict[str, Any]], limit: int, codec: CursorCodec, listing: str,
         key_columns: Sequence[str]) -> tuple[list[dict[str, Any]], str | None]:
    """Rows were fetched with limit + 1: the extra row only says whether there is a next page."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = codec.encode(listing, [rows[-1][c] for c in key_columns]) if more and rows else None
    return rows, cursor


def period(start: date | None, end: date | None, today: date) -> tuple[datetime, datetime]:
    """[from, to] as whole days in UTC (both inclusive); defaults: today, and 1 January of `to`'s year."""
    last = end or today
    first = start or date(last.year, 1, 1)
    if last < first:
        raise ValueError("'to' must not be before 'from'")
    return (datetime.combine(first, time(), timezone.utc),
            datetime.combine(last + timedelta(days=1), time(), timezone.utc))
