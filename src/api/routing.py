"""One thread-pool hop per request for the routes that block (every route class of the API), and
a small thread pool of their own for the query API's lookups.

FastAPI runs a plain `def` endpoint in the thread pool, and then, when the route has a response
model, hops to the pool a second time to validate what the endpoint returned. `OneHopRoute`
hands FastAPI an `async def` that runs the endpoint in the pool itself: the blocking work still
never runs on the event loop, and the response is validated on the loop, where it is cheap. Each
hop cost 80-170 us of CPU on this machine (10,000 `anyio.to_thread.run_sync` calls in a throwaway
timing loop), and under load the second one is also a second wait for the GIL (BENCHMARKS.md,
"Levers tried for commands and queries").

`LookupRoute` (the router of `crm.api.routes.queries`: the 360 view, a customer's pages, the
complaint queue and detail) runs its GET endpoints on a limiter of their own,
`CRM_API_LOOKUP_THREADS` threads per process (default 3), not on anyio's 40. A lookup holds its
thread for one short query and otherwise needs the GIL: with 32 connections, 32 threads queued
for it (and for the pool's 10 connections) in no order; with 3 the rest wait in the limiter's
queue, first come first served. Neither the CPU per lookup nor the rate changed; p99 fell
(BENCHMARKS.md, `python -m bench.lookup_threads`). Everything else keeps the 40: commands, because
concurrent commands are what group commit batches (`crm.infra.group_commit`), and reports and
audit reads, because their work grows with the data set and must not hold up the lookups.

The endpoint's signature, annotations and docstring are FastAPI's to read as before
(`functools.wraps` sets `__wrapped__`, which FastAPI follows for parameters, the response model
and forward references).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter

from crm.infra.settings import Settings

DEFAULT_LOOKUP_THREADS: int = Settings.model_fields["api_lookup_threads"].default  # one default, the setting's
_lookup_limiter: RunVar[CapacityLimiter] = RunVar("crm_lookup_limiter")  # one per event loop, as anyio's own


def lookup_limiter() -> CapacityLimiter:
    """This event loop's limiter for LookupRoute GETs (DEFAULT_LOOKUP_THREADS until sized)."""
    try:
        return _lookup_limiter.get()
    except LookupError:
        limiter = CapacityLimiter(DEFAULT_LOOKUP_THREADS)
        _lookup_limiter.set(limiter)
        return limiter


def size_lookup_limiter(threads: int) -> None:
    """Set this event loop's number of lookup threads (the app's lifespan calls it at start)."""
    lookup_limiter().total_tokens = threads


def in_thread_pool(endpoint: Callable[..., Any], *, lookup: bool = False) -> Callable[..., Any]:
    """A plain function becomes a coroutine function that runs it in the thread pool (with
    `lookup`, on the lookup limiter); coroutine functions and generator functions (FastAPI streams
    those itself) are returned as they are."""
    if (not inspect.isfunction(endpoint) or inspect.iscoroutinefunction(endpoint)
            or inspect.isgeneratorfunction(endpoint) or inspect.isasyncgenfunction(endpoint)):
        return endpoint

    @functools.wraps(endpoint)
    async def hop(*args: Any, **kwargs: Any) -> Any:
        return await run_blocking(endpoint, lookup_limiter() if lookup else None, args, kwargs)

    return hop


async def run_blocking(endpoint: Callable[..., Any], limiter: CapacityLimiter | None, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
    """The one hop: the endpoint in a worker thread, on `limiter` (None: anyio's default, 40)."""
    return await to_thread.run_sync(functools.partial(endpoint, *args, **kwargs), limiter=limiter)


class OneHopRoute(APIRoute):
    """An APIRoute whose blocking endpoint costs one thread-pool hop, not two."""

    lookups = False  # GETs on the lookup limiter (LookupRoute)

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        lookup = self.lookups and bool(kwargs.get("methods")) and set(kwargs["methods"]) <= {"GET", "HEAD"}
        super().__init__(path, in_thread_pool(endpoint, lookup=lookup), **kwargs)


class LookupRoute(OneHopRoute):
    """A OneHopRoute whose GET endpoints run on the lookup limiter (short, bounded reads only)."""

    lookups = True


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes into the app's own route table, as `@app.get` would have put them.

    Since FastAPI 0.137, `include_router` keeps each included router behind a wrapper, and a
    request is matched twice against the routes of the router that serves it, after the routers
    before it were tried in turn; the 360 view's router is the sixth. An APIRoute is complete
    when its router makes it (prefix, tags, the router's dependencies, route class), so the
    routes can be added as they are: the OpenAPI document is the same (a test compares it), and
    a 360 lookup cost 0.08 ms less CPU in-process (BENCHMARKS.md, levers table). What is lost:
    `app.dependency_overrides` does not reach these routes (include_router made the app their
    overrides provider); nothing here uses overrides. The route objects are the routers' own, so
    every app made in one process shares them: nothing per app may be set on them."""
    app.router.routes.extend(router.routes)
