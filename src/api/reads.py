"""What query routes share: read-your-writes, strict query parameters, pages, the caller's scope."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any, Awaitable, Callable, Sequence
from uuid import UUID

from fastapi import Depends, Header, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from crm.api.auth import Principal
from crm.api.schemas import MAX_PAGE_REQUEST, MAX_POSITION
from crm.queries.base import MAX_LIMIT, CursorCodec, ReadStore

WAIT_SECONDS = 5.0


async def read_your_writes(request: Request,
                           min_position: Annotated[int | None, Header(alias="X-Min-Position", ge=0, le=MAX_POSITION)] = None) -> None:
    """With `X-Min-Position: N`, wait (at most 5 s) until every read model has processed position N;
    a position beyond the last recorded event is a 422 at once."""
    if min_position is None:
        return
    runtime = request.app.state.runtime
    if await run_in_threadpool(runtime.reads.wait_for, min_position, 0):
        return
    # A position no write has reached yet is the caller's mistake, not a wait: answer at once.
    last = await run_in_threadpool(runtime.store.recorder.max_notification_id) or 0
    if min_position > last:
        raise HTTPException(422, f"X-Min-Position {min_position} is beyond the last recorded event ({last})")
    if not await run_in_threadpool(runtime.reads.wait_for, min_position, WAIT_SECONDS):
        raise HTTPException(503, f"the read models have not reached position {min_position} yet",
                            headers={"Retry-After": "1"})


def only(*allowed: str) -> Callable[[Request], Awaitable[None]]:
    """Refuse query parameters the route does not know (a typo must not silently widen a filter)."""
    known = set(allowed)

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise HTTPException(422, f"unknown query parameters: {', '.join(unknown)}")

    return check


async def reads(request: Request) -> ReadStore:
    return request.app.state.runtime.reads


async def codec(request: Request) -> CursorCodec:
    return request.app.state.cursor_codec


async def today(request: Request) -> date:
    return request.app.state.clock().date()


async def capped(limit: Annotated[int, Query(ge=1, le=MAX_PAGE_REQUEST, description="page size; capped at 500")] = 50
                 ) -> int:
    return min(limit, MAX_LIMIT)


class FilteredCursors(CursorCodec):
    """The app's codec, with the listing's filters bound into every cursor it signs: a cursor
    handed back with other filters (or none) is refused (422) like a forged one, instead of
    silently paging a different listing from a position that belongs to another."""

    def __init__(self, codec: CursorCodec, **filters: Any) -> None:
        self._codec = codec
        self._filters = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)

    def encode(self, listing: str, key: Sequence[Any]) -> str:
        return self._codec.encode(f"{listing}?{self._filters}", key)

    def decode(self, listing: str, cursor: str) -> list[Any]:
        return self._codec.decode(f"{listing}?{self._filters}", cursor)


def ensure_own(principal: Principal, customer_id: UUID | None) -> None:
    """A customer key sees only its own customer's data; other roles see all."""
    if principal.customer_id is not None and principal.customer_id != customer_id:
        raise HTTPException(403, "this key may read only its own customer's data")


Reads = Annotated[ReadStore, Depends(reads)]
Codec = Annotated[CursorCodec, Depends(codec)]
Today = Annotated[date, Depends(today)]
Limit = Annotated[int, Depends(capped)]
Cursor = Annotated[str | None, Query(max_length=2000, description="from the previous page's next_cursor")]
